import json

from typer.testing import CliRunner

from recalign.cli import app


def test_the_readme_main_job_runs_and_the_catalogue_is_learnable(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "baselines.json").read_text())
    hr = {name: model["metrics"]["HR@10"] for name, model in report["models"].items()}
    assert hr["markov"] > 3 * hr["popularity"] > 3 * hr["random"]
    assert (tmp_path / "data" / "manifest.json").exists() and "repairs: none needed" in result.output
