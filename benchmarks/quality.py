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
from common import REPO, CommandRunner, add_runner_arguments, machine, shown_command, write_section

SHARED = REPO.parent / "shared" / "data"
INDUSTRIAL = SHARED / "minionerec" / "Industrial_and_Scientific"
DOC = REPO / "docs" / "benchmarks" / "quality.md"
RESULTS = REPO / "docs" / "benchmarks" / "quality"
KS = (3, 5, 10)


def llm_arm(extra: list[str], seed: int = 0) -> dict:
    return {"kind": "llm", "extra": extra, "seed": seed}


# Industrial: every LLM arm is SmolLM2-135M, full fine-tuning (MiniOneRec's setting), the sequence objective over
# SIDs (next_item rows only), selected on validation NDCG@10 every epoch with patience 3.
KEYWORDS = str(INDUSTRIAL / "description_keywords.json")  # the shipped teacher file (TS-Rec's token semantics)
TCA = ["--align", "tca", "--cf", "{sasrec}", "--alpha", "{alpha}"]  # the SASRec arm's logits as soft labels
INDUSTRIAL_ARMS = {
    "sasrec": {"kind": "cf", "extra": ["--model", "sasrec"]},
    "sid-seq": llm_arm([]),
    "sid-seq-seed1": llm_arm([], seed=1),
    "scratch-seq": llm_arm(["--backbone", "scratch:4x256", "--lr", "1e-3"]),
    "sa-init": llm_arm(["--sa-init", "--semantics", KEYWORDS]),
    "ts-align": llm_arm(["--ts-align", "--semantics", KEYWORDS]),
    "ts-rec": llm_arm(["--sa-init", "--ts-align", "--semantics", KEYWORDS]),
    "tca": llm_arm(TCA),
    "ts-rec-tca": llm_arm(["--sa-init", "--ts-align", "--semantics", KEYWORDS, *TCA]),
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
            *[x for pair in settings.items() for x in pair],
            *[x.format(sasrec=out.parent / "sasrec", alpha=args.alpha) for x in extra]]


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
                                                     "--threads", args.threads], out / "test_metrics.json")
            runner.run(f"Industrial: {name} test", ["cf", "eval", "--data", data, "--model-dir", out, "--k",
                                                    ",".join(map(str, KS)), "--ranks", ranks, "--json"], ranks,
                       stdout=out / "test_eval.json")
        else:
            runner.run(f"Industrial: {name} train", llm_train_argv(args, data, sids, out, arm),
                       out / "training.json")
            runner.run(f"Industrial: {name} test", ["llm", "eval", "--data", data, "--model", out, "--k",
                                                    ",".join(map(str, KS)), "--beams", "10", "--ranks", ranks,
                                                    "--threads", args.threads, "--json"], ranks,
                       stdout=out / "test_eval.json")
        if not runner.dry:
            keep_result(work, name)


def keep_result(work: Path, name: str) -> None:
    """Copies an arm's small result files (metrics, per-row ranks, train and selection logs) under docs/."""
    kept = RESULTS / "Industrial_and_Scientific" / name
    kept.mkdir(parents=True, exist_ok=True)
    for file in ("test_eval.json", "test_ranks.parquet", "selection.json", "train/train_log.csv",
                 "train_log.csv"):
        if (work / name / file).exists():
            (kept / Path(file).name).write_bytes((work / name / file).read_bytes())


ARM_NAMES = {"sasrec": "SASRec (recalign's default: CE over all positions, early stopping on valid NDCG@10)",
             "sid-seq": "SmolLM2-135M SID recommender, sequence objective (seed 0)",
             "sid-seq-seed1": "the same, seed 1",
             "scratch-seq": "from-scratch decoder 4x256, same objective and SIDs",
             "sa-init": "+ SA-Init (SID token rows from the shipped teacher keywords)",
             "ts-align": "+ TS-Align (token <-> description rows in the mix)",
             "ts-rec": "+ SA-Init + TS-Align (TS-Rec)",
             "tca": "+ TCA4Rec (the SASRec arm's logits as soft labels at every position)",
             "ts-rec-tca": "TS-Rec + TCA4Rec"}
PUBLISHED = ["| model (MiniOneRec paper, Industrial, full train split, Qwen-scale) | HR@10 | NDCG@10 |",
             "|---|---|---|", "| SASRec | .1088 | .0806 |", "| TIGER | .1321 | .0908 |",
             "| MiniOneRec | .1586 | .1167 |"]


def finished_arms() -> dict[str, dict]:
    """Each finished Industrial arm's kept results: metrics record, per-row ranks, training curve."""
    from recalign.eval.metrics import read_ranks

    arms = {}
    for name in INDUSTRIAL_ARMS:
        kept = RESULTS / "Industrial_and_Scientific" / name
        if not (kept / "test_ranks.parquet").exists():
            continue
        arms[name] = {"record": json.loads((kept / "test_eval.json").read_text()),
                      "ranks": read_ranks(kept / "test_ranks.parquet"), "curve": validation_curve(kept)}
    return arms


def validation_curve(kept: Path) -> list[tuple[float, float]]:
    """(training minutes, validation NDCG@10) after each epoch: the LLM's selection rounds or the CF trainer's log."""
    if (kept / "selection.json").exists():
        log = pd.read_csv(kept / "train_log.csv")
        minutes = log.groupby("epoch")["seconds"].sum().cumsum() / 60
        return [(float(minutes[row["epoch"]]), row["NDCG@10"]) for row in json.loads((kept / "selection.json")
                                                                                      .read_text())]
    log = pd.read_csv(kept / "train_log.csv")
    return list(zip((log["seconds"].cumsum() / 60).tolist(), log["valid_NDCG@10"].tolist()))


def metrics_cell(record: dict, name: str) -> str:
    return f"{record[name]:.4f} ± {record['ci95'][name]:.4f}"


def paired_cell(ranks: np.ndarray, base: np.ndarray | None, metric: str = "NDCG@10") -> str:
    from recalign.eval.metrics import paired_difference

    if base is None or ranks is base:
        return "–"
    mean, half = paired_difference(ranks, base, metric)
    verdict = "above" if mean - half > 0 else "below" if mean + half < 0 else "interval holds 0"
    return f"{mean:+.4f} ± {half:.4f} ({verdict})"


def plot_curves(arms: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4))
    for name, arm in arms.items():
        minutes, ndcg = zip(*arm["curve"]) if arm["curve"] else ((), ())
        axis.plot(minutes, ndcg, marker="o", label=name)
    axis.set_xlabel("training time (minutes, validation decoding excluded)")
    axis.set_ylabel("validation NDCG@10")
    axis.set_ylim(bottom=0)
    axis.set_title("Industrial_and_Scientific")
    axis.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def industrial_section(args, runner: CommandRunner) -> str:
    arms = finished_arms()
    if not arms:
        return "No Industrial arm has finished yet."
    plot_curves(arms, DOC.parent / "quality_industrial.png")
    sasrec = arms.get("sasrec", {}).get("ranks")
    base = arms.get(BASE, {}).get("ranks")
    n_rows = {len(arm["ranks"]) for arm in arms.values()}
    lines = [f"Test rows: {', '.join(f'{n:,}' for n in sorted(n_rows))} (every row of test.csv); full catalogue "
             "(3,686 items); a hit is the target item. ± is the 95% interval over rows; the paired columns are the "
             "mean per-row difference of NDCG@10 on the same rows with its 95% interval.", "",
             "| arm | " + " | ".join(f"{m}@{k}" for k in KS for m in ("HR", "NDCG")) + " | NDCG@10 − SASRec | "
             f"NDCG@10 − {BASE} | minutes trained | best valid NDCG@10 (minute) |", "|" + "---|" * (2 * len(KS) + 5)]
    for name, arm in arms.items():
        record, curve = arm["record"], arm["curve"]
        best = max(curve, key=lambda point: point[1]) if curve else None
        lines.append(f"| {name} | " + " | ".join(metrics_cell(record, f"{m}@{k}") for k in KS for m in ("HR", "NDCG"))
                     + f" | {paired_cell(arm['ranks'], sasrec)} | {paired_cell(arm['ranks'], base)} | "
                     + (f"{curve[-1][0]:.1f} | {best[1]:.4f} ({best[0]:.1f}) |" if curve else "– | – |"))
    lines += ["", *[f"- **{name}**: {ARM_NAMES[name]}" for name in arms], "",
              "![validation NDCG@10 against training time](quality_industrial.png)", "",
              "The LLM arms' validation points are NDCG@10 on the first "
              f"{args.select_rows} validation rows after each epoch (the selection rounds: the best round's model is "
              "the one tested); SASRec's are its trainer's NDCG@10 on every validation row.", "",
              "For orientation only (another training set and scale, never in the same column as ours):", "",
              *PUBLISHED]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, REPO / "runs" / "bench-quality", DOC)
    parser.add_argument("--arms", default=",".join(INDUSTRIAL_ARMS), help="Industrial arms to run now")
    parser.add_argument("--epochs", type=int, default=10, help="LLM epoch cap (selection stops earlier)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--alpha", type=float, default=0.1, help="TCA arms: weight of the CF soft labels")
    parser.add_argument("--select-rows", type=int, default=300)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the kept results")
    args = parser.parse_args()
    runner = CommandRunner(args.work, args.python)
    if not args.report_only:
        run_industrial(runner, args, [a for a in args.arms.split(",") if a])
    header = (f"Produced by `{shown_command('quality.py')}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC), on "
              f"{machine()}, {args.threads} threads, fp32 (`auto`: no native bf16 here). Each arm's small result "
              "files are kept under `docs/benchmarks/quality/`; the commands are listed under *Commands*.")
    write_section(args.out, "industrial", "## Industrial_and_Scientific: semantic IDs\n\n" + header + "\n\n"
                  + industrial_section(args, runner), "Quality: aligned LLM recommenders against SASRec")
    listed = CommandRunner(args.work, args.python, dry=True)  # every finished arm's commands, run now or before
    run_industrial(listed, args, list(finished_arms()))
    write_section(args.out, "commands", "## Commands\n\n" + "\n".join(listed.commands_block()),
                  "Quality: aligned LLM recommenders against SASRec")


if __name__ == "__main__":
    main()
