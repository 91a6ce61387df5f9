"""Quality tables: LLM recommenders against a tuned SASRec on real data, each alignment against its base arm.

Every arm is a sequence of ``recalign`` commands run one at a time by ``CommandRunner`` (an arm whose outputs exist
is reused, an interrupted ``llm train`` resumes from its last checkpoint), so a table fills in over several
sittings; ``--arms`` picks which arms to run now (``DATASET:ARM``) and the report shows every finished one. Each
finished arm's small result files (metrics, per-row test ranks, train and selection logs) are kept under
``docs/benchmarks/quality/``, so arms are compared by paired per-row differences with 95% intervals.

- Industrial_and_Scientific (minionerec layout, shipped SIDs): train = each user's items before the first valid
  target (``--minionerec-train histories``); every test row; SmolLM2-135M, full fine-tuning, the sequence objective.
- Office_Products (amazon18, titles): the shipped 10,000 training rows; the first ``--office-test-rows`` test rows;
  SmolLM2-135M with LoRA (TCA4Rec's setting).

Every LLM arm is selected on validation NDCG@10 (the first ``--select-rows`` rows) after each epoch, patience 3.

    .venv/bin/python benchmarks/quality.py --arms Industrial_and_Scientific:sasrec,Industrial_and_Scientific:sid-seq
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, CommandRunner, add_runner_arguments, keep_files, machine, shown_command, write_section

SHARED = REPO.parent / "shared" / "data"
INDUSTRIAL = SHARED / "minionerec" / "Industrial_and_Scientific"
DOC = REPO / "docs" / "benchmarks" / "quality.md"
RESULTS = REPO / "docs" / "benchmarks" / "quality"
TITLE = "Quality: aligned LLM recommenders against SASRec"
KS = (3, 5, 10)
KEPT = ("test_eval.json", "test_ranks.parquet", "selection.json", "train/train_log.csv", "train_log.csv")
KEYWORDS = str(INDUSTRIAL / "description_keywords.json")  # the shipped teacher file (TS-Rec's token semantics)
TCA = ["--align", "tca", "--cf", "{sasrec}", "--alpha", "{alpha}"]  # the tuned SASRec's logits as soft labels
# SASRec tuned on validation rows only: every setting trains with early stopping on valid NDCG@10, the best one is
# the table's SASRec (and the CF model of the TCA arms); recalign's defaults are the first setting
SASREC_SWEEP = {"default": [], "lr3e-3": ["--lr", "3e-3"], "b128-d0.2": ["--batch-size", "128", "--dropout", "0.2"]}
SWEEP_LIMITS = ["--epochs", "400", "--patience", "40"]
SASREC = {"kind": "cf", "extra": ["--model", "sasrec"],
          "about": "SASRec (CE over all positions), the best on valid NDCG@10 of recalign's default and two other "
                   "settings (learning rate; batch size with dropout), each with early stopping, patience 40"}


def llm_arm(about: str, extra: list[str] = (), seed: int = 0) -> dict:
    return {"kind": "llm", "extra": list(extra), "seed": seed, "about": about}


@dataclass
class Table:
    """One dataset's arms: how its data is prepared, what every LLM arm shares, and the base arm."""

    prepare: list
    llm: list  # the options every LLM arm shares ({data}, {sids} filled in)
    arms: dict[str, dict]
    base: str
    test_rows: int | None = None  # None: every test row
    sids: bool = False
    setting: str = ""
    published: list[str] = field(default_factory=list)


TABLES = {
    "Industrial_and_Scientific": Table(
        prepare=["--format", "minionerec", "--source", INDUSTRIAL, "--minionerec-train", "histories"],
        llm=["--backbone", "smollm2-135m", "--lr", "3e-4", "--finetune", "full", "--prompt", "sequence", "--rows",
             "sequence", "--pack-length", "512", "--tasks", "next_item", "--domain",
             "industrial and scientific items", "--batch-size", "16", "--micro-batch-size", "8",
             "--warmup-steps", "10"],
        arms={"sasrec": SASREC,
              "sid-seq": llm_arm("SmolLM2-135M SID recommender, sequence objective (seed 0)"),
              "sid-seq-seed1": llm_arm("the same, seed 1", seed=1),
              "sid-seq-mix": llm_arm("the same with MiniOneRec's other tasks in the mix (title <-> SID, history -> "
                                     "next title; next_item still as sequence rows)",
                                     ["--tasks", "next_item,title_to_sid,sid_to_title,next_title"]),
              "scratch-seq": llm_arm("from-scratch decoder 4x256, same objective and SIDs",
                                     ["--backbone", "scratch:4x256", "--lr", "1e-3"]),
              "sa-init": llm_arm("+ SA-Init (SID token rows from the shipped teacher keywords)",
                                 ["--sa-init", "--semantics", KEYWORDS]),
              "ts-align": llm_arm("+ TS-Align (token <-> description rows in the mix)",
                                  ["--ts-align", "--semantics", KEYWORDS]),
              "ts-rec": llm_arm("+ SA-Init + TS-Align (TS-Rec)",
                                ["--sa-init", "--ts-align", "--semantics", KEYWORDS]),
              "tca": llm_arm("+ TCA4Rec (the SASRec arm's logits as soft labels at every position)", TCA),
              "ts-rec-tca": llm_arm("TS-Rec + TCA4Rec", ["--sa-init", "--ts-align", "--semantics", KEYWORDS, *TCA])},
        base="sid-seq", sids=True,
        setting="minionerec layout, shipped SIDs; train = each user's items before the first valid target "
                "(`--minionerec-train histories`: 1,618 sequences, 6,424 targets); every test row; full catalogue "
                "(3,686 items), constrained 10-beam search; a hit is the target item. LLM arms: SmolLM2-135M, full "
                "fine-tuning, the sequence objective (next_item rows only), AdamW lr 3e-4, batch 16.",
        published=["| model (MiniOneRec paper, Industrial, full train split, Qwen-scale) | HR@10 | NDCG@10 |",
                   "|---|---|---|", "| SASRec | .1088 | .0806 |", "| TIGER | .1321 | .0908 |",
                   "| MiniOneRec | .1586 | .1167 |"]),
    "Office_Products": Table(
        prepare=["--format", "amazon18", "--source", SHARED / "amazon18" / "Office_Products"],
        llm=["--backbone", "smollm2-135m", "--lr", "5e-4", "--finetune", "lora", "--domain", "office products",
             "--batch-size", "16", "--micro-batch-size", "4", "--warmup-steps", "10", "--checkpoint-every", "20"],
        arms={"sasrec": SASREC,
              "sft": llm_arm("plain SFT, sequence objective (titles, LoRA r 8)",
                             ["--prompt", "sequence", "--rows", "sequence", "--pack-length", "1024"]),
              "sft-rows": llm_arm("plain SFT, row objective (the papers': TCA4Rec's prompt, one target per row)",
                                  ["--prompt", "tca4rec", "--rows", "target"]),
              "tca": llm_arm("+ TCA4Rec (the SASRec arm's logits)",
                             ["--prompt", "sequence", "--rows", "sequence", "--pack-length", "1024", *TCA]),
              "msl": llm_arm("MSL (tau 4.5)",
                             ["--prompt", "sequence", "--rows", "sequence", "--pack-length", "1024", "--msl"]),
              "msl-tca": llm_arm("MSL + TCA4Rec", ["--prompt", "sequence", "--rows", "sequence", "--pack-length",
                                                   "1024", "--msl", *TCA])},
        base="sft", test_rows=2000,
        setting="amazon18 as shipped (10,000 / 5,000 / 5,000 rows, 9,913 items); titles; the first 2,000 test rows; "
                "full catalogue, constrained 10-beam search over the title trie. LLM arms: SmolLM2-135M, LoRA r 8 on "
                "q/k/v/o, AdamW lr 5e-4, batch 16.",
        published=["TCA4Rec reports its gains over plain SFT in its Table 2 (see ../shared/reference/tca4rec.md)."]),
}


def arm_commands(runner: CommandRunner, args, name: str, table: Table, arms: list[str]) -> None:
    """Runs (or, with a dry runner, lists) the commands of the given arms of one table."""
    work = args.work / name
    data, sids = work / "data", work / "sids"
    runner.run(f"{name}: data", ["data", "prepare", *table.prepare, "--out", data], data / "manifest.json")
    if table.sids:
        runner.run(f"{name}: SIDs", ["index", "import", "--data", data, "--out", sids], sids / "sids.json")
    rows = ["--max-rows", table.test_rows] if table.test_rows else []
    for arm_name in arms:
        arm, out = table.arms[arm_name], work / arm_name
        ranks, label = out / "test_ranks.parquet", f"{name}: {arm_name}"
        if arm["kind"] == "cf":
            best = sasrec_sweep(runner, args, name, work, data)
            out.mkdir(parents=True, exist_ok=True)
            runner.run(f"{label} test ({best.name})", ["cf", "eval", "--data", data, "--model-dir", best, "--k",
                                                       ",".join(map(str, KS)), "--ranks", ranks, "--json"], ranks,
                       stdout=out / "test_eval.json")
            if not runner.dry:
                keep_files(best, out, ("train_log.csv",))
        else:
            runner.run(f"{label} train", llm_train_argv(args, table, data, sids, out, arm), out / "training.json")
            runner.run(f"{label} test", ["llm", "eval", "--data", data, "--model", out, "--k", ",".join(map(str, KS)),
                                         "--beams", "10", *rows, "--ranks", ranks, "--threads", args.threads,
                                         "--json"], ranks, stdout=out / "test_eval.json")
        if not runner.dry:
            keep_files(work / arm_name, RESULTS / name / arm_name, KEPT)
            for setting in SASREC_SWEEP if arm["kind"] == "cf" else ():
                keep_files(work / "sasrec-sweep" / setting, RESULTS / name / "sasrec-sweep" / setting,
                           ("train_log.csv",))


def sasrec_sweep(runner: CommandRunner, args, name: str, work: Path, data: Path) -> Path:
    """Trains every SASREC_SWEEP setting (validation rows only) and returns the folder of the best."""
    for setting, options in SASREC_SWEEP.items():
        out = work / "sasrec-sweep" / setting
        runner.run(f"{name}: SASRec sweep {setting}", ["cf", "train", "--data", data, "--model", "sasrec", "--out", out,
                                                       *options, *SWEEP_LIMITS, "--threads", args.threads],
                   out / "test_metrics.json")
    return best_sasrec(work)


def best_sasrec(work: Path) -> Path:
    """The swept SASRec with the best valid NDCG@10 (the default setting until one has trained)."""
    logs = {setting: work / "sasrec-sweep" / setting / "train_log.csv" for setting in SASREC_SWEEP}
    scores = {setting: pd.read_csv(log)["valid_NDCG@10"].max() for setting, log in logs.items() if log.exists()}
    return work / "sasrec-sweep" / (max(scores, key=scores.get) if scores else "default")


def sweep_lines(name: str) -> list[str]:
    """The SASRec sweep's validation results, one row per setting."""
    rows = []
    for setting, options in SASREC_SWEEP.items():
        log = RESULTS / name / "sasrec-sweep" / setting / "train_log.csv"
        if log.exists():
            frame = pd.read_csv(log)
            best = frame.loc[frame["valid_NDCG@10"].idxmax()]
            rows.append(f"| {setting} | `{' '.join(options) or '(defaults)'}` | {best['valid_NDCG@10']:.4f} | "
                        f"{int(best['epoch'])} of {len(frame)} |")
    if not rows:
        return []
    return ["SASRec's settings on validation (all valid rows; the best is the table's SASRec):", "",
            "| setting | options | best valid NDCG@10 | at epoch |", "|---|---|---|---|", *rows, ""]


def llm_train_argv(args, table: Table, data: Path, sids: Path, out: Path, arm: dict) -> list:
    """The table's shared options, then the arm's (an arm's option replaces a shared one of the same name)."""
    shared, extra = list(table.llm), list(arm["extra"])
    for i in range(0, len(shared) - 1):
        if shared[i] in extra and shared[i].startswith("--") and not shared[i + 1].startswith("--"):
            shared[i:i + 2] = [None, None]
    return ["llm", "train", "--data", data, *(["--sids", sids] if table.sids else []), "--out", out,
            *[x for x in shared if x is not None], "--epochs", args.epochs, "--select-every", "1", "--select-metric",
            "NDCG@10", "--select-rows", args.select_rows, "--select-patience", "3", "--eval-split", "", "--seed",
            arm["seed"], "--threads", args.threads, "--resume",
            *[x.format(sasrec=best_sasrec(out.parent), alpha=args.alpha) for x in extra]]


def finished_arms(name: str, table: Table) -> dict[str, dict]:
    """Each finished arm's kept results: metrics record, per-row ranks, validation curve."""
    from recalign.eval.metrics import read_ranks

    arms = {}
    for arm_name in table.arms:
        kept = RESULTS / name / arm_name
        if (kept / "test_ranks.parquet").exists():
            ranks = read_ranks(kept / "test_ranks.parquet")[:table.test_rows]  # CF models rank every test row
            arms[arm_name] = {"record": json.loads((kept / "test_eval.json").read_text()), "ranks": ranks,
                              "curve": validation_curve(kept)}
    return arms


def validation_curve(kept: Path) -> list[tuple[float, float]]:
    """(training minutes, validation NDCG@10) after each epoch: the LLM's selection rounds or the CF trainer's log."""
    log = pd.read_csv(kept / "train_log.csv")
    if (kept / "selection.json").exists():
        minutes = log.groupby("epoch")["seconds"].sum().cumsum() / 60
        rounds = json.loads((kept / "selection.json").read_text())
        return [(float(minutes[row["epoch"]]), row["NDCG@10"]) for row in rounds]
    return list(zip((log["seconds"].cumsum() / 60).tolist(), log["valid_NDCG@10"].tolist()))


def metric_cells(ranks: np.ndarray) -> list[str]:
    """HR and NDCG at each K with 95% intervals, from the per-row ranks (so every arm's cells cover the same rows)."""
    from recalign.eval.metrics import confidence_95, ranking_metrics

    values, half = ranking_metrics(ranks, KS), confidence_95(ranks, KS)
    return [f"{values[f'{m}@{k}']:.4f} ± {half[f'{m}@{k}']:.4f}" for k in KS for m in ("HR", "NDCG")]


def paired_cell(ranks: np.ndarray, base: np.ndarray | None, metric: str = "NDCG@10") -> str:
    from recalign.eval.metrics import paired_difference

    if base is None or ranks is base:
        return "–"
    mean, half = paired_difference(ranks, base, metric)
    verdict = "above" if mean - half > 0 else "below" if mean + half < 0 else "interval holds 0"
    return f"{mean:+.4f} ± {half:.4f} ({verdict})"


def plot_curves(arms: dict[str, dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4))
    for name, arm in arms.items():
        if arm["curve"]:
            minutes, ndcg = zip(*arm["curve"])
            axis.plot(minutes, ndcg, marker="o", label=name)
    axis.set_xlabel("training time (minutes, validation decoding excluded)")
    axis.set_ylabel("validation NDCG@10")
    axis.set_ylim(bottom=0)
    axis.set_title(title)
    axis.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def hit_breakdown(data: Path, arms: dict[str, dict], test_rows: int | None) -> list[str]:
    """Where each arm's hits are: rows whose target repeats a history item and rows with a new item, top 10 and
    first place (needs the prepared data in the working folder)."""
    if not (data / "manifest.json").exists():
        return []
    from recalign.data import load_dataset
    from recalign.eval.protocols import split_histories

    dataset = load_dataset(data)
    histories = split_histories(*dataset.histories("test"))[:test_rows]
    targets = dataset.table("test").column("target").to_numpy()[:test_rows]
    repeat = np.array([target in set(history.tolist()) for history, target in zip(histories, targets)])
    lines = [f"Where the hits are ({repeat.sum():,} rows whose target repeats a history item, {(~repeat).sum():,} "
             "with a new item):", "", "| arm | ranked first | repeat rows: top 10 | repeat rows: first | "
             "new-item rows: top 10 | new-item rows: first |", "|---|---|---|---|---|---|"]
    for arm_name, arm in arms.items():
        ranks = arm["ranks"]
        lines.append(f"| {arm_name} | {(ranks == 0).sum():,} | {(ranks[repeat] < 10).sum():,} | "
                     f"{(ranks[repeat] == 0).sum():,} | {(ranks[~repeat] < 10).sum():,} | "
                     f"{(ranks[~repeat] == 0).sum():,} |")
    return lines + [""]


def table_section(args, name: str, table: Table) -> str:
    arms = finished_arms(name, table)
    lines = [f"## {name}", "", table.setting, ""]
    if not arms:
        return "\n".join(lines + ["No arm has finished yet."])
    plot = f"quality_{name}.png"
    plot_curves(arms, name, DOC.parent / plot)
    sasrec, base = arms.get("sasrec", {}).get("ranks"), arms.get(table.base, {}).get("ranks")
    lines += [f"{len(next(iter(arms.values()))['ranks']):,} test rows, the same for every arm. ± is the 95% interval "
              "over rows; the paired columns are the mean per-row difference of NDCG@10 on the same rows with its "
              "95% interval (above / below: the interval excludes 0).", "",
              "| arm | " + " | ".join(f"{m}@{k}" for k in KS for m in ("HR", "NDCG")) + " | NDCG@10 − SASRec | "
              f"NDCG@10 − {table.base} | distinct top-1 items | minutes trained | best valid NDCG@10 (minute) |",
              "|" + "---|" * (2 * len(KS) + 6)]
    for arm_name, arm in arms.items():
        curve = arm["curve"]
        best = max(curve, key=lambda point: point[1]) if curve else None
        lines.append(f"| {arm_name} | " + " | ".join(metric_cells(arm["ranks"]))
                     + f" | {paired_cell(arm['ranks'], sasrec)} | {paired_cell(arm['ranks'], base)} | "
                     + f"{arm['record'].get('diversity', {}).get('distinct_top1', '–')} | "
                     + (f"{curve[-1][0]:.1f} | {best[1]:.4f} ({best[0]:.1f}) |" if curve else "– | – |"))
    lines += ["", *[f"- **{arm_name}**: {table.arms[arm_name]['about']}" for arm_name in arms], "",
              *sweep_lines(name), *hit_breakdown(args.work / name / "data", arms, table.test_rows),
              "*Distinct top-1 items*: how many different items the LLM ranks first over the test rows (a model "
              "that learned popularity rather than the user ranks the same few first for everyone).", "",
              f"![validation NDCG@10 against training time]({plot})", "",
              f"The LLM arms' validation points are NDCG@10 on the first {args.select_rows} validation rows after each "
              "epoch (the selection rounds: the best round's model is the one tested); SASRec's are its trainer's "
              "NDCG@10 on every validation row.", "",
              "For orientation only (another training set and scale, never in the same column as ours):", "",
              *table.published]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, REPO / "runs" / "bench-quality", DOC)
    parser.add_argument("--arms", default="", help="DATASET:ARM,... to run now (the report covers every finished "
                                                   "arm)")
    parser.add_argument("--epochs", type=int, default=10, help="LLM epoch cap (selection stops earlier)")
    parser.add_argument("--select-rows", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=0.1, help="TCA arms: weight of the CF soft labels")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the kept results")
    args = parser.parse_args()
    runner = CommandRunner(args.work, args.python)
    wanted = [tuple(item.split(":", 1)) for item in args.arms.split(",") if item]
    for name, table in TABLES.items():
        arms = [arm for dataset, arm in wanted if dataset == name]
        unknown = set(arms) - set(table.arms)
        if unknown:
            parser.error(f"{name} has no arm {', '.join(sorted(unknown))}: {', '.join(table.arms)}")
        if arms and not args.report_only:
            arm_commands(runner, args, name, table, arms)
    header = (f"Produced by `{shown_command('quality.py')}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC) on "
              f"{machine()}, fp32 (`auto`: no native bf16 here), one heavy job at a time, each command's threads as "
              "listed under *Commands* (the arms run over several sittings; this is the last). Each arm's small result "
              "files are kept under `docs/benchmarks/quality/`.")
    write_section(args.out, "header", header, TITLE)
    listed = CommandRunner(args.work, args.python, dry=True)
    for name, table in TABLES.items():
        write_section(args.out, name, table_section(args, name, table), TITLE)
        finished = list(finished_arms(name, table))
        if finished:
            arm_commands(listed, args, name, table, finished)
    write_section(args.out, "commands", "## Commands\n\n" + "\n".join(listed.commands_block()), TITLE)


if __name__ == "__main__":
    main()
