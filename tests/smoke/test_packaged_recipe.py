"""A packaged recipe on real data as a user runs it: `recalign run tca4rec-toys-cpu --offline` with the data cache
holding the published split (here linked to the copy in ../shared/data), cut to a few steps."""

import json

import pytest
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data import download as dl


@pytest.mark.slow
def test_tca4rec_toys_cpu_runs_offline_from_the_data_cache(shared_data, tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "cache_dir", lambda: tmp_path / "cache")  # the data cache only; models stay cached
    folder = dl.cache_folder("tca4rec:Toys_and_Games")
    folder.parent.mkdir(parents=True)
    folder.symlink_to(shared_data / "amazon18" / "Toys_and_Games")

    result = CliRunner().invoke(app, [
        "run", "tca4rec-toys-cpu", "--offline", "--run-dir", str(tmp_path / "run"), "--set", "cf.train.epochs=1",
        "--set", "llm.recommender.backbone=tiny", "--set", "llm.recommender.precision=fp32",
        "--set", "llm.train.precision=fp32", "--set", "llm.max_train_rows=8", "--set", "llm.train.batch_size=4",
        "--set", "eval.rows=4"])

    assert result.exit_code == 0, result.output
    assert f"tca4rec:Toys_and_Games: in {folder}, verified" in result.output
    assert "stages run: data, cf, llm, eval" in result.output
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    data = json.loads((tmp_path / "run" / stages["data"] / "stage.json").read_text())["settings"]
    assert data["source"] == str(folder)
    results = json.loads((tmp_path / "run" / stages["eval"] / "results.json").read_text())
    assert results["n_examples"] == 4 and "llm (tiny + tca)" in results["models"]
