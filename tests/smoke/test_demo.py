import json

import pytest
from typer.testing import CliRunner

from recalign.cli import app


@pytest.mark.slow
def test_the_readme_main_job_runs_and_sasrec_beats_popularity(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results.json").read_text())
    hr = {name: model["metrics"]["HR@10"] for name, model in report["models"].items()}
    assert hr["sasrec"] > 3 * hr["popularity"] and hr["markov"] > 3 * hr["popularity"] > 3 * hr["random"]
    assert (tmp_path / "sasrec" / "model.safetensors").exists() and "repairs: none needed" in result.output
