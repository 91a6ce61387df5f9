import json

import pytest
from typer.testing import CliRunner

from recalign.cli import app


@pytest.mark.slow
def test_the_readme_main_job_runs_and_sasrec_beats_popularity(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "3", "--llm-backbone", "tiny",
                                      "--llm-rows", "32", "--eval-rows", "300"])
    assert result.exit_code == 0, result.output
    stages = json.loads((tmp_path / "run.json").read_text())["stages"]
    assert set(stages) == {"data", "cf", "llm", "eval"} and "repairs: none needed" in result.output
    report = json.loads((tmp_path / stages["eval"] / "results.json").read_text())
    # every model, the LLM recommender included, on the same first test rows
    assert report["n_examples"] == 300
    assert set(report["models"]) == {"popularity", "random", "markov", "sasrec", "llm (tiny)"}
    hr = {name: model["metrics"]["HR@10"] for name, model in report["models"].items()}
    assert hr["sasrec"] > 3 * hr["popularity"] and hr["markov"] > 3 * hr["popularity"] > 3 * hr["random"]
    assert (tmp_path / stages["cf"] / "model.safetensors").exists()
    assert (tmp_path / stages["llm"] / "config.json").exists()
    assert (tmp_path / stages["llm"] / "index" / "index.json").exists()
