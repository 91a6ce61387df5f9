"""`recalign run`: a small recipe end to end, the second run skipping every stage, a changed setting rerunning
only the stages that depend on it, an interrupted LLM stage resuming from its checkpoint, and recipe errors that
name the file and the setting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data.synth import write_synthetic
from recalign.pipeline import RecipeError, load_recipe, packaged_recipes, run_recipe, stage_keys

runner = CliRunner()
SMALL = {
    "name": "small",
    "data": {"format": "synth", "synth": {"users": 120, "items": 100, "seed": 0}},
    "cf": {"model": "sasrec", "settings": {"hidden": 16, "max_len": 8}, "train": {"epochs": 2, "seed": 0}},
    "llm": {"recommender": {"backbone": "tiny", "precision": "fp32", "finetune": "full", "domain": "things"},
            "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "warmup_steps": 1,
                      "precision": "fp32", "checkpoint_every": 1},
            "max_train_rows": 24},
    "eval": {"rows": 6, "ks": [1, 5], "beams": 5},
}


def write(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_a_second_run_skips_and_a_changed_setting_reruns_what_depends_on_it(tmp_path):
    recipe_file = write(tmp_path, SMALL)
    first = runner.invoke(app, ["run", str(recipe_file), "--run-dir", str(tmp_path / "run")])
    assert first.exit_code == 0, first.output
    assert "stages run: data, cf, llm, eval" in first.output
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    results = json.loads((tmp_path / "run" / stages["eval"] / "results.json").read_text())
    assert set(results["models"]) == {"popularity", "random", "markov", "sasrec", "llm (tiny)"}
    assert results["n_examples"] == 6 and all(len(m["ranks"]) == 6 for m in results["models"].values())
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert all(f"| {name} " in report or f" {name} |" in report for name in results["models"])
    for plot in ("metrics.png", "training.png", "agreement.png"):
        assert (tmp_path / "run" / "report" / plot).stat().st_size > 1000
    hits = {name: [r is not None and r < 5 for r in model["ranks"]] for name, model in results["models"].items()}
    both = sum(a and b for a, b in zip(hits["sasrec"], hits["llm (tiny)"]))
    neither = sum(not a and not b for a, b in zip(hits["sasrec"], hits["llm (tiny)"]))
    assert f"both hit {both}," in report and f"both miss {neither}." in report
    hr = results["models"]["sasrec"]["metrics"]["HR@5"]
    assert f"{hr:.4f}" in report.split("| HR@5 |")[1].splitlines()[0]

    started = time.perf_counter()
    second = runner.invoke(app, ["run", str(recipe_file), "--run-dir", str(tmp_path / "run")])
    assert second.exit_code == 0, second.output
    assert "stages run: none; skipped (finished earlier): data, cf, llm, eval" in second.output
    assert time.perf_counter() - started < 30
    assert json.loads((tmp_path / "run" / stages["eval"] / "results.json").read_text()) == results

    third = runner.invoke(app, ["run", str(recipe_file), "--run-dir", str(tmp_path / "run"),
                                "--set", "llm.train.lr=2e-3"])
    assert third.exit_code == 0, third.output
    assert "stages run: llm, eval; skipped (finished earlier): data, cf" in third.output


def test_stage_keys_follow_their_inputs(tmp_path):
    recipe = load_recipe(write(tmp_path, SMALL))
    keys = stage_keys(recipe)
    changed = stage_keys(load_recipe(write(tmp_path, SMALL), ["cf.train.epochs=3"]))
    assert changed["data"] == keys["data"] and changed["cf"] != keys["cf"]
    assert changed["llm"] == keys["llm"]  # plain SFT does not read the CF model
    assert changed["eval"] != keys["eval"]  # the evaluation does
    tca = stage_keys(load_recipe(write(tmp_path, SMALL), ["llm.align=tca"]))
    tca_changed = stage_keys(load_recipe(write(tmp_path, SMALL), ["llm.align=tca", "cf.train.epochs=3"]))
    assert tca["llm"] != keys["llm"] and tca_changed["llm"] != tca["llm"]  # TCA does
    assert stage_keys(load_recipe(write(tmp_path, SMALL), ["llm.train.checkpoint_every=5"])) == keys

    # a recipe reading files: their content (size, time) is part of the key
    write_synthetic(tmp_path / "raw", n_users=50, n_items=100)
    csv_recipe = write(tmp_path, {**SMALL, "data": {"format": "csv", "source": str(tmp_path / "raw")}}, "csv.yaml")
    before = stage_keys(load_recipe(csv_recipe))
    items = tmp_path / "raw" / "items.csv"
    items.write_text(items.read_text() + "\n")
    after = stage_keys(load_recipe(csv_recipe))
    assert after["data"] != before["data"] and after["cf"] != before["cf"]


@pytest.mark.slow
def test_an_interrupted_llm_stage_resumes(tmp_path):
    recipe = {**SMALL, "llm": {**SMALL["llm"], "max_train_rows": 64}}
    recipe_file = write(tmp_path, recipe)
    command = [sys.executable, "-m", "recalign.cli", "run", str(recipe_file), "--run-dir", str(tmp_path / "run"),
               "--threads", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    checkpoint = None
    while checkpoint is None:  # kill it once the LLM stage has written its second checkpoint
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-3000:]
        found = list((tmp_path / "run").glob("llm-*/train/checkpoint/progress.json"))
        try:
            if found and json.loads(found[0].read_text())["state"]["global_step"] >= 2:
                checkpoint = found[0]
        except (json.JSONDecodeError, FileNotFoundError):  # caught mid-write or mid-swap: look again
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    llm_folder = checkpoint.parents[2]
    assert not (llm_folder / "stage.json").exists()

    resumed = runner.invoke(app, ["run", str(recipe_file), "--run-dir", str(tmp_path / "run")])
    assert resumed.exit_code == 0, resumed.output
    assert "llm: resuming in" in resumed.output and "skipped (finished earlier): data, cf" in resumed.output
    log = (llm_folder / "train" / "train_log.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in log[1:]]
    assert steps == list(range(1, 17))  # 64 rows / batch 4: every step once, none repeated


def test_recipe_errors_name_the_file_and_the_setting(tmp_path):
    for change, message in (({"cf": {**SMALL["cf"], "trian": {}}}, "cf: unknown setting trian"),
                            ({"llm": {**SMALL["llm"], "train": {"epochs": "ten"}}}, "llm.train.epochs must be int"),
                            ({"data": {"format": "parquet"}}, "data.format must be one of"),
                            ({"eval": {"ks": [1, 20], "beams": 10}}, "eval.beams (10) must be at least"),
                            ({"llm": {**SMALL["llm"], "align": "tca"}, "cf": None}, "tca needs a cf stage")):
        path = write(tmp_path, {**SMALL, **change}, "bad.yaml")
        with pytest.raises(RecipeError, match="bad.yaml") as error:
            load_recipe(path)
        assert message in str(error.value)
    with pytest.raises(RecipeError, match="not of the form"):
        load_recipe(write(tmp_path, SMALL), ["llm.train.lr"])
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, SMALL), ["eval.ks=[1,"])
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "no such recipe file" in result.output


def test_packaged_recipes_load():
    assert "demo" in packaged_recipes()
    for name in packaged_recipes():
        recipe = load_recipe(name)
        assert recipe.name and recipe.description
    demo = load_recipe("demo")
    assert demo.data.format == "synth" and demo.cf.model == "sasrec" and demo.llm.max_train_rows == 384


def test_run_recipe_from_python(tmp_path):
    recipe = load_recipe(write(tmp_path, {**SMALL, "llm": None}))
    lines = []
    outcomes = run_recipe(recipe, tmp_path / "run", log=lines.append, progress=False)
    assert [o.stage for o in outcomes] == ["data", "cf", "eval"] and not any(o.skipped for o in outcomes)
    assert any(line.startswith("dataset: 100 items") for line in lines)


@pytest.mark.slow
def test_a_semantic_id_recipe_builds_its_index_and_reports_codebook_usage(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    recipe = {
        "name": "sid",
        "data": {"format": "synth", "synth": {"users": 120, "items": 100, "seed": 0}},
        "index": {"source": "build", "quantizer": {"method": "rqkmeans", "levels": 2, "codebook_size": 6},
                  "collisions": "extra_level"},
        "llm": {**SMALL["llm"], "recommender": {**SMALL["llm"]["recommender"], "prompt": "minionerec",
                                                "identifier": "sid"},
                "sa_init": True, "ts_align": True, "max_examples": 24},
        "eval": {"rows": 4, "ks": [1, 5], "beams": 5, "baselines": ["popularity"]},
    }
    result = runner.invoke(app, ["run", str(write(tmp_path, recipe)), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "stages run: data, index, llm, eval" in result.output
    assert "SA-Init:" in result.output and "task mix: next_item" in result.output
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    sids = json.loads((tmp_path / "run" / stages["index"] / "sids.json").read_text())
    assert len(sids) == 100 and len({tuple(s) for s in sids.values()}) == 100  # extra_level: unique
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Semantic IDs" in report and "| a | 6 | 6 |" in report
    assert (tmp_path / "run" / "report" / "codebooks.png").stat().st_size > 1000
    with pytest.raises(RecipeError, match="identifier: sid and an index stage go together"):
        load_recipe(write(tmp_path, {**recipe, "index": None}, "bad.yaml"))


@pytest.mark.slow
def test_an_allmrec_recipe_trains_both_stages_and_reports_the_candidate_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    recipe = {
        "name": "allmrec",
        "data": SMALL["data"],
        "cf": SMALL["cf"],
        "allmrec": {"stage1": {"epochs": 1, "batch_size": 64},
                    "recommender": {"backbone": "tiny", "precision": "fp32", "finetune": "frozen", "max_history": 4},
                    "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 4, "lr": 1e-3, "precision": "fp32"},
                    "max_train_rows": 8, "n_candidates": 10, "selection": {"every": 1, "rows": 4}},
        "eval": {"rows": 5, "ks": [1, 5], "beams": 5, "baselines": ["popularity"]},
    }
    result = runner.invoke(app, ["run", str(write(tmp_path, recipe)), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    rounds = json.loads((tmp_path / "run" / stages["allmrec"] / "selection.json").read_text())
    assert [r["step"] for r in rounds] == [1, 2] and "valid Hit@1 (4 rows)" in result.output
    assert "stages run: data, cf, allmrec, eval" in result.output and "A-LLMRec stage 1: 1 epochs" in result.output
    results = json.loads((tmp_path / "run" / stages["eval"] / "results.json").read_text())
    assert set(results["candidates"]) == {"A-LLMRec", "sasrec"}
    assert all(r["groups"]["all"]["rows"] == 5 and r["n_candidates"] == 10 for r in results["candidates"].values())
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "## Candidate protocol (A-LLMRec)" in report and "| A-LLMRec |" in report
    with pytest.raises(RecipeError, match="allmrec needs a cf stage"):
        load_recipe(write(tmp_path, {**recipe, "cf": None}, "bad.yaml"))


def test_an_auto_precision_run_records_the_resolved_one_and_prints_its_artefacts(tmp_path, monkeypatch):
    from recalign import precision

    monkeypatch.setattr(precision, "_gpu", lambda: None)  # a CPU without bf16 instructions
    monkeypatch.setattr(precision, "cpu_info", lambda: precision.CPUInfo("AMD EPYC 7B12", frozenset({"avx2"})))
    llm = {**SMALL["llm"], "recommender": {**SMALL["llm"]["recommender"], "precision": "auto"},
           "train": {**SMALL["llm"]["train"], "precision": "auto"}, "max_train_rows": 8}
    recipe_file = write(tmp_path, {**SMALL, "cf": None, "llm": llm})
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", str(recipe_file), "--run-dir", str(run), "--set", "eval.rows=3"])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "run.json").read_text())
    assert record["overrides"] == ["eval.rows=3"]
    llm_dir = run / record["stages"]["llm"]
    stage = json.loads((llm_dir / "stage.json").read_text())
    assert stage["settings"]["recommender"]["precision"] == "auto"
    assert stage["outcome"]["precision"] == {"weights": "fp32", "training": "fp32"}
    assert json.loads((llm_dir / "config.json").read_text())["recommender"]["precision"] == "fp32"
    output = " ".join(result.output.split())  # rich may wrap long lines
    assert f"dataset folder: {run / record['stages']['data'] / 'dataset'}" in output
    assert f"LLM recommender: {llm_dir}" in output
    report = (run / "report" / "report.md").read_text()
    assert "Overrides (`--set`): `eval.rows=3`." in report
    assert "Precision of the llm stage: weights fp32, training fp32 (resolved from `auto`" in report
    assert "LLM training rows (one row per target): 8 training rows, 8 item targets" in report


def test_a_packaged_recipe_run_as_packaged_records_this_machines_time(tmp_path, monkeypatch):
    from recalign.pipeline import recipe as recipe_module
    from recalign.pipeline.runtime import expected_time, measured_here

    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    assert expected_time(load_recipe("demo"), gpu=False) == (  # the packaged measurement
        "about 10 min on this kind of machine (measured on Intel Xeon, AVX-512 without bf16 (fp32), 2 cores, no GPU, "
        "2026-12-08)")
    assert expected_time(load_recipe("demo"), gpu=True) == "not measured on a GPU machine (measured: 10 min on " \
        "Intel Xeon, AVX-512 without bf16 (fp32), 2 cores, no GPU)"
    monkeypatch.setattr(recipe_module, "PACKAGED", tmp_path / "packaged")
    write(tmp_path / "packaged", {**SMALL, "llm": None}, "small.yaml")
    assert expected_time(load_recipe("small"), gpu=False) == "not measured on a CPU-only machine"

    changed = runner.invoke(app, ["run", "small", "--run-dir", str(tmp_path / "a"), "--set", "cf.train.epochs=1"])
    assert changed.exit_code == 0, changed.output
    assert measured_here("small") == []  # not the recipe as packaged
    first = runner.invoke(app, ["run", "small", "--run-dir", str(tmp_path / "b")])
    assert first.exit_code == 0, first.output
    (measured,) = measured_here("small")
    assert measured.gpu is False and 0 < measured.seconds < 120 and "cores, no GPU" in measured.machine
    again = runner.invoke(app, ["run", "small", "--run-dir", str(tmp_path / "b")])  # every stage skipped
    assert again.exit_code == 0 and measured_here("small") == [measured]
    listing = runner.invoke(app, ["recipes"])
    assert "measured on this machine" in listing.output and "small" in listing.output
