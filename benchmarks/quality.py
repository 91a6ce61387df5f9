"""Quality tables: LLM recommenders against a tuned SASRec on real data, each alignment against its base arm.

Every arm is a sequence of ``recalign`` commands run one at a time by ``CommandRunner`` (an arm whose outputs exist
is reused, an interrupted ``llm train`` resumes from its last checkpoint), so the table fills in over several
sittings; ``--arms`` picks which arms to run now and the report shows every finished one.

Industrial_and_Scientific (minionerec layout, shipped SIDs): train = each user's items before the first valid
target (``--minionerec-train histories``), model selection on the first ``--select-rows`` validation rows, test on
every test row, full catalogue (constrained 10-beam search for the LLMs). Each arm's per-row test ranks are kept
(``--ranks``), so arms are compared by paired per-row differences against the base arm with 95% intervals.

    .venv/bin/python benchmarks/quality.py --arms sasrec,sid-seq --threads 2
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, CommandRunner, add_runner_arguments, machine, shown_command

SHARED = REPO.parent / "shared" / "data"
INDUSTRIAL = SHARED / "minionerec" / "Industrial_and_Scientific"
DOC = REPO / "docs" / "benchmarks" / "quality.md"
RESULTS = REPO / "docs" / "benchmarks" / "quality"
KS = (3, 5, 10)


def llm_arm(extra: list[str], seed: int = 0) -> dict:
    return {"kind": "llm", "extra": extra, "seed": seed}


# Industrial: every LLM arm is SmolLM2-135M, full fine-tuning (MiniOneRec's setting), the sequence objective over
# SIDs (next_item rows only), selected on validation NDCG@10 every epoch with patience 3.
INDUSTRIAL_ARMS = {
    "sasrec": {"kind": "cf", "extra": ["--model", "sasrec"]},
    "sid-seq": llm_arm([]),
    "sid-seq-seed1": llm_arm([], seed=1),
    "scratch-seq": llm_arm(["--backbone", "scratch:4x256", "--lr", "1e-3"]),
}
BASE = "sid-seq"


def llm_train_argv(args, data: Path, sids: Path, out: Path, arm: dict) -> list:
    settings = {"--backbone": "smollm2-135m", "--lr": str(args.lr)}
    extra = list(arm["extra"])
    for key in list(settings):
        if key in extra:
            settings[key] = extra.pop(extra.index(key) + 1)
            extra.remove(key)
    return ["llm", "train", "--data", data, "--sids", sids, "--out", out, "--finetune", "full",
            "--prompt", "sequence", "--rows", "sequence", "--pack-length", "512", "--tasks", "next_item",
            "--domain", "industrial and scientific items", "--epochs", args.epochs, "--batch-size", "16",
            "--micro-batch-size", "8", "--warmup-steps", "10", "--select-every", "1", "--select-metric", "NDCG@10",
            "--select-rows", args.select_rows, "--select-patience", "3", "--eval-split", "",
            "--seed", arm["seed"], "--threads", args.threads, "--resume",
            *[x for pair in settings.items() for x in pair], *extra]


def run_industrial(runner: CommandRunner, args, arms: list[str]) -> None:
    work = args.work / "Industrial_and_Scientific"
    data, sids = work / "data", work / "sids"
    runner.run("Industrial: data", ["data", "prepare", "--format", "minionerec", "--source", INDUSTRIAL, "--out",
                                    data, "--minionerec-train", "histories"], data / "manifest.json")
    runner.run("Industrial: SIDs", ["index", "import", "--data", data, "--out", sids], sids / "sids.json")
    for name in arms:
        arm, out = INDUSTRIAL_ARMS[name], work / name
        ranks = out / "test_ranks.parquet"
        if arm["kind"] == "cf":
            runner.run(f"Industrial: {name} train", ["cf", "train", "--data", data, "--out", out, *arm["extra"],
                                                     "--threads", args.threads], out / "config.json")
            runner.run(f"Industrial: {name} test", ["cf", "eval", "--data", data, "--model-dir", out, "--k",
                                                    ",".join(map(str, KS)), "--ranks", ranks, "--json"], ranks,
                       stdout=out / "test_metrics.json")
        else:
            runner.run(f"Industrial: {name} train", llm_train_argv(args, data, sids, out, arm),
                       out / "training.json")
            runner.run(f"Industrial: {name} test", ["llm", "eval", "--data", data, "--model", out, "--k",
                                                    ",".join(map(str, KS)), "--beams", "10", "--ranks", ranks,
                                                    "--threads", args.threads, "--json"], ranks,
                       stdout=out / "test_metrics.json")
        keep_result(work, name)


def keep_result(work: Path, name: str) -> None:
    """Copies an arm's small result files (metrics, per-row ranks, train and selection logs) under docs/."""
    kept = RESULTS / "Industrial_and_Scientific" / name
    kept.mkdir(parents=True, exist_ok=True)
    for file in ("test_metrics.json", "test_ranks.parquet", "selection.json", "train/train_log.csv",
                 "train_log.csv"):
        if (work / name / file).exists():
            (kept / Path(file).name).write_bytes((work / name / file).read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, REPO / "runs" / "bench-quality", DOC)
    parser.add_argument("--arms", default=",".join(INDUSTRIAL_ARMS), help="Industrial arms to run now")
    parser.add_argument("--epochs", type=int, default=10, help="LLM epoch cap (selection stops earlier)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--select-rows", type=int, default=300)
    args = parser.parse_args()
    runner = CommandRunner(args.work, args.python)
    run_industrial(runner, args, [a for a in args.arms.split(",") if a])


if __name__ == "__main__":
    main()
