import json

import pytest
from typer.testing import CliRunner

from recalign.cli import app


@pytest.mark.slow
def test_the_readme_main_job_runs_and_sasrec_beats_popularity(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--epochs", "3", "--llm-backbone", "tiny",
                                      "--llm-rows", "32", "--llm-eval-rows", "8"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "results.json").read_text())
    hr = {name: model["metrics"]["HR@10"] for name, model in report["models"].items()}
    assert hr["sasrec"] > 3 * hr["popularity"] and hr["markov"] > 3 * hr["popularity"] > 3 * hr["random"]
    assert (tmp_path / "sasrec" / "model.safetensors").exists() and "repairs: none needed" in result.output
    llm = report["llm"]  # the LLM recommender is compared with the others on the same first test rows
    assert llm["n_examples"] == 8 and set(llm["models"]) == {"popularity", "random", "markov", "sasrec", "llm (tiny)"}
    assert (tmp_path / "llm" / "config.json").exists() and (tmp_path / "llm" / "index" / "index.json").exists()
