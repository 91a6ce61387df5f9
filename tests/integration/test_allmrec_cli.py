"""`recalign allmrec stage1 | stage2 | eval` on a small synthetic catalogue with the tiny LLM: A-LLMRec, the
LLM-only baseline and a CF model judged on the same candidate sets."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data.formats import PrepareOptions, prepare
from recalign.data.synth import write_synthetic

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_allmrec_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    write_synthetic(tmp_path / "raw", n_users=120, n_items=100, seed=0)
    dataset, _ = prepare("csv", tmp_path / "raw", PrepareOptions())
    data = dataset.save(tmp_path / "data")
    invoke("cf", "train", "--data", data, "--model", "sasrec", "--out", tmp_path / "cf", "--epochs", "1",
           "--hidden", "16", "--max-len", "8")
    out = invoke("allmrec", "stage1", "--data", data, "--cf", tmp_path / "cf", "--out", tmp_path / "s1",
                 "--epochs", "2", "--batch-size", "64")
    assert "epoch 2: matching" in out and "warm items (enc_I)" in out
    no_stage1 = runner.invoke(app, ["allmrec", "stage2", "--data", str(data), "--cf", str(tmp_path / "cf"),
                                    "--out", str(tmp_path / "x"), "--backbone", "tiny"])
    assert no_stage1.exit_code == 1 and "need --stage1" in no_stage1.output
    common = ["--data", data, "--cf", tmp_path / "cf", "--backbone", "tiny", "--precision", "fp32",
              "--max-train-rows", "8", "--n-candidates", "10", "--max-history", "4"]
    out = invoke("allmrec", "stage2", *common, "--stage1", tmp_path / "s1", "--out", tmp_path / "a")
    assert "trained" in out
    invoke("allmrec", "stage2", *common, "--no-soft-tokens", "--out", tmp_path / "llm-only")
    out = invoke("allmrec", "stage2", *common, "--no-soft-tokens", "--zero-shot", "--out", tmp_path / "zero-shot")
    assert "nothing trained" in out and not (tmp_path / "zero-shot" / "train").exists()
    # stage 2 in validation rounds: Hit@1 on 4 valid rows after every step, the best round kept
    out = invoke("allmrec", "stage2", *common, "--stage1", tmp_path / "s1", "--out", tmp_path / "sel",
                 "--select-every", "1", "--select-rows", "4", "--select-patience", "1")
    rounds = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert "valid Hit@1 (4 rows)" in out and "kept step" in out and set(rounds[0]) == {"step", "Hit@1", "kept",
                                                                                         "seconds"}
    for extra, message in ((["--no-soft-tokens", "--zero-shot", "--select-every", "2"], "zero-shot"),
                           (["--stage1", tmp_path / "s1", "--select-every", "2", "--select-rows", "0"], "at least 1"),
                           (["--stage1", tmp_path / "s1", "--select-patience", "2"], "needs --select-every")):
        refused = runner.invoke(app, ["allmrec", "stage2", *map(str, common), "--out", str(tmp_path / "bad"),
                                      *map(str, extra)])
        assert refused.exit_code == 1 and message in refused.output, refused.output
    variants = {name: json.loads((tmp_path / name / "allmrec.json").read_text())["variant"]
                for name in ("a", "llm-only", "zero-shot")}
    assert variants == {"a": "A-LLMRec", "llm-only": "LLM-only (lora, TALLRec-like)",
                        "zero-shot": "LLM-only (zero-shot)"}
    # the official code's settings: one row per user, raw text vectors, Adam at a constant rate, no clipping
    invoke("allmrec", "stage1", "--data", data, "--cf", tmp_path / "cf", "--out", tmp_path / "s1-ref", "--epochs", "1",
           "--train-rows", "last", "--text-input", "reference")
    invoke("allmrec", "stage2", *common, "--stage1", tmp_path / "s1-ref", "--out", tmp_path / "a-ref",
           "--train-rows", "last", "--optimizer", "adam", "--schedule", "constant", "--max-grad-norm", "0",
           "--cf-dropout", "--lr", "0.001")
    lrs = (tmp_path / "a-ref" / "train" / "train_log.csv").read_text().splitlines()
    assert len(lrs) == 3 and all(",0.001," in line for line in lrs[1:])  # 8 users' last rows, 4 per step
    results = {}
    judged = {"a": ["--model", tmp_path / "a", "--lenient"], "llm-only": ["--model", tmp_path / "llm-only"],
              "zero-shot": ["--model", tmp_path / "zero-shot"], "cf": ["--cf", tmp_path / "cf"]}
    for name, args in judged.items():
        results[name] = json.loads(invoke("allmrec", "eval", "--data", data, *args, "--rows", "6", "--json",
                                          "--hits", tmp_path / f"hits-{name}.parquet"))
    for name, result in results.items():
        groups = result["groups"]
        assert groups["all"]["rows"] == 6 and 0 <= groups["all"]["Hit@1"] <= 1
        assert groups["warm items"]["rows"] + groups["cold items"]["rows"] <= 6
        hits = pd.read_parquet(tmp_path / f"hits-{name}.parquet")  # per row, paired across models
        assert hits["row"].tolist() == list(range(6)) and hits["hit"].mean() == pytest.approx(groups["all"]["Hit@1"])
        assert hits["cold items"].sum() == groups["cold items"]["rows"]
    assert results["a"]["n_candidates"] == 10 and "Hit@1 lenient" in results["a"]["groups"]["all"]
    for command in (["llm", "eval", "--data", str(data), "--model", str(tmp_path / "a")],
                    ["recommend", "--model", str(tmp_path / "a"), "--history", "1,2"]):
        refused = runner.invoke(app, command)
        assert refused.exit_code == 1 and "recalign allmrec eval" in refused.output
    retrieved = json.loads(invoke("allmrec", "eval", "--data", data, "--model", tmp_path / "a", "--cf",
                                  tmp_path / "cf", "--protocol", "retrieved", "--rows", "4", "--json"))
    assert retrieved["protocol"] == "retrieved" and retrieved["groups"]["all"]["rows"] == 4
