"""`recalign llm train --align tca`: the hook really drives training, alpha 0 is plain SFT, bad options fail."""

from __future__ import annotations

import csv
import json

from tests.conftest import rule_dataset
from typer.testing import CliRunner

from recalign.cf import TrainConfig, build_model, train
from recalign.cli import app

runner = CliRunner()


def logged_losses(folder) -> list[float]:
    with open(folder / "train" / "train_log.csv") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def test_tca_training_from_the_cli(tmp_path):
    dataset = rule_dataset()
    data = tmp_path / "data"
    dataset.save(data)
    cf = build_model("sasrec", dataset.n_items, "tca4rec", max_len=8)
    train(cf, dataset, TrainConfig(epochs=2, seed=0), tmp_path / "cf", progress=False)
    common = ["llm", "train", "--data", str(data), "--backbone", "tiny", "--precision", "fp32", "--finetune", "full",
              "--max-train-rows", "32", "--batch-size", "8", "--micro-batch-size", "8", "--eval-split", ""]

    def run(name: str, *extra: str):
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
        return logged_losses(tmp_path / name)

    plain = run("plain")
    zero = run("zero", "--align", "tca", "--cf", str(tmp_path / "cf"), "--alpha", "0")
    tca = run("tca", "--align", "tca", "--cf", str(tmp_path / "cf"), "--alpha", "0.5")
    msl = run("msl", "--msl")
    assert zero == plain  # alpha 0 is exactly the plain objective
    assert tca != plain and msl != plain  # the hook is what gets optimised
    record = json.loads((tmp_path / "tca" / "alignment.json").read_text())
    assert record["method"] == "tca" and record["alpha"] == 0.5 and record["cf_model"] == "sasrec"
    assert json.loads((tmp_path / "msl" / "alignment.json").read_text())["method"] == "none"

    missing = runner.invoke(app, [*common, "--out", str(tmp_path / "x"), "--align", "tca"])
    assert missing.exit_code == 1 and "needs --cf" in missing.output
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "y"), "--align", "tca", "--cf", str(tmp_path / "cf"),
                              "--alpha", "2"])
    assert bad.exit_code == 1 and "alpha must lie in [0, 1]" in bad.output
