"""A-LLMRec with power: A-LLMRec vs the LLM-only baselines (LoRA-tuned, TALLRec-like, and zero-shot, the paper's
LLM-Only) vs SASRec on the paper's 20-candidate Hit@1, on thousands of test rows, each stage-2 arm trained until
its validation Hit@1 stops rising.

Every step is a ``recalign`` command run one at a time by ``CommandRunner`` (a step whose output exists is reused,
an interrupted stage 2 resumes from its last checkpoint without judging its finished validation rounds again), so
the table fills in over several sittings; ``--arms`` picks which arms to run now and the report shows every
finished one. Each arm's small result files (evaluation, per-row hits, validation rounds, training log) are kept
under ``docs/benchmarks/allmrec_quality/<dataset>/<arm>/`` as soon as the arm finishes.

All arms judge the same test rows with the same seeded candidate sets (the target and 19 items outside the
history), so every comparison is a paired per-row difference with a 95% interval, overall and on warm items, cold
items and cold users.

    .venv/bin/python benchmarks/allmrec_quality.py --threads 2

Office_Products by default: its SASRec is about four times stronger than Toys' (test NDCG@10 .055 vs .0135 over
the full catalogue, docs/benchmarks/cf.md), on half the catalogue (9,913 items, so more interactions per item
embedding), so the collaborative knowledge A-LLMRec injects has more to give; both datasets have hundreds of
cold-item test rows among the first 2,000.

Expected duration on a 2-core Xeon without native bf16 (fp32; estimates, not measurements: a 4-row LoRA step of
~1,020 tokens takes 5 s there, docs/benchmarks/precision.md, and an Office A-LLMRec prompt is ~700 tokens):
stage 2 about 14 s per optimiser step (the defaults: 250 steps, about 60 min) plus 4-5 min per validation round
(150 rows, 5 rounds at most), so at most about 85 min per stage-2 arm, less when patience stops it; the test about
1.5-2 s per row for each LLM arm (2,000 rows: 50-65 min each, three arms); data, SASRec and stage 1 a few minutes.
About 5-6 hours in all: run it over several sittings (the same command resumes), e.g. ``--arms sasrec,allmrec``
first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from common import REPO, SHARED_AMAZON18, CommandRunner, add_runner_arguments, keep_files, machine, shown_command

DOC = REPO / "docs" / "benchmarks" / "allmrec_quality.md"
RESULTS = REPO / "docs" / "benchmarks" / "allmrec_quality"
ARMS = {"sasrec": "SASRec (recalign's default: CE over the catalogue, early stopping on validation NDCG@10), ranking "
                  "the same 20 candidates by its scores",
        "allmrec": "A-LLMRec: the LLM frozen, the projectors F_U and F_I trained on the stage-1 joint embeddings "
                   "over SASRec's",
        "llm-only-lora": "LLM-only, LoRA-tuned (the paper's TALLRec row): the same prompt without soft tokens",
        "llm-only-zero-shot": "LLM-only, zero-shot (the paper's LLM-Only): the same prompt, the LLM untrained"}
STAGE2 = ("allmrec", "llm-only-lora")  # trained in validation rounds
GROUPS = ("all", "warm items", "cold items", "cold users")
PAIRS = (("allmrec", "sasrec"), ("allmrec", "llm-only-lora"), ("allmrec", "llm-only-zero-shot"),
         ("llm-only-lora", "sasrec"))
# (arm, against, group, what the paper reports for it): the claims this benchmark can test
CLAIMS = (("allmrec", "sasrec", "all", "A-LLMRec above SASRec overall (Toys .3336 vs .2359)"),
          ("allmrec", "sasrec", "cold items", "A-LLMRec above SASRec on cold items (Table 4: Movies .5714 vs .2589, "
                                             "Games .4263 vs .1991, Beauty .5605 vs .1190)"),
          ("allmrec", "sasrec", "warm items", "A-LLMRec above SASRec on warm items, by little (Table 4: Movies .6880 "
                                             "vs .6787, Games .5970 vs .5764, Beauty .6414 vs .6312)"),
          ("allmrec", "sasrec", "cold users", "A-LLMRec above SASRec for cold users (Table 5: Movies .5272 vs .2589, "
                                             "Games .4160 vs .4048, Beauty .5337 vs .4459)"),
          ("allmrec", "llm-only-lora", "all", "A-LLMRec above the LoRA-tuned LLM-only (TALLRec; Toys .3336 vs "
                                             ".0710)"),
          ("allmrec", "llm-only-zero-shot", "all", "A-LLMRec above the zero-shot LLM-only (Toys .3336 vs .0141)"))
PAPER = ("The paper's figures, for orientation only (OPT-6.7B, the official preprocessing of other Amazon data, "
         "every user, 10,000 test users; the paper has no Office_Products): Toys Hit@1 A-LLMRec .3336, SASRec "
         ".2359, TALLRec .0710, LLM-Only .0141 (Table 1); cold / warm items and cold users in Tables 4 and 5 "
         "(Movies, Games, Beauty), quoted in the claims above. Its cold users are users with exactly three "
         "interactions held out of training; here they are test rows whose user has no training row.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Office_Products", choices=("Office_Products", "Toys_and_Games"))
    parser.add_argument("--arms", default=",".join(ARMS), help="arms to run now (the report shows every finished one)")
    parser.add_argument("--train-rows", type=int, default=1000, help="stage-2 prompts (the first N training rows, "
                        "one epoch, batch 4)")
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--select-every", type=int, default=50, help="optimiser steps between validation rounds")
    parser.add_argument("--select-rows", type=int, default=150, help="validation rows judged each round")
    parser.add_argument("--select-patience", type=int, default=2)
    parser.add_argument("--projector-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=3e-4)
    parser.add_argument("--lenient", action="store_true", help="also the paper's free generation + substring "
                        "match (about doubles the LLM arms' evaluation time)")
    parser.add_argument("--cf", type=Path, help="a SASRec already trained on the same prepared data (e.g. by "
                        "quality.py) instead of training one here")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the kept results")
    parser.add_argument("--source", type=Path, help="the amazon18 folder (default: the shared data's --dataset)")
    parser.add_argument("--backbone", default="smollm2-135m", help="'tiny' for a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where each finished arm's files are kept")
    add_runner_arguments(parser, REPO / "runs" / "bench-allmrec-quality", DOC)
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arms {', '.join(sorted(unknown))}; choose among {', '.join(ARMS)}")
    args.source = args.source or SHARED_AMAZON18 / args.dataset
    if not args.source.is_dir() and not args.report_only:
        print(f"{args.source} is absent: this benchmark needs the shared data", file=sys.stderr)
        return 1
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not args.report_only:
        run_arms(CommandRunner(args.work.resolve(), args.python), args, arms)
    listed = CommandRunner(args.work.resolve(), args.python, dry=True)  # every finished arm's commands and times
    finished = finished_arms(args.results / args.dataset)
    run_arms(listed, args, list(finished))
    args.out.write_text(render(args, started, listed, finished))
    print(f"wrote {args.out}")
    return 0


def run_arms(runner: CommandRunner, args, arms: list[str]) -> None:
    work = args.work.resolve() / args.dataset
    data, s1 = work / "data", work / "stage1"
    cf = (args.cf or work / "sasrec").resolve()
    threads, run = ["--threads", args.threads], runner.run
    kept = args.results / args.dataset
    run("data", ["data", "prepare", "--format", "amazon18", "--source", args.source, "--out", data],
        data / "manifest.json")
    if args.cf is None:
        run("SASRec train", ["cf", "train", "--data", data, "--model", "sasrec", "--out", cf, "--resume", *threads],
            cf / "test_metrics.json")
    if "allmrec" in arms:
        run("stage 1", ["allmrec", "stage1", "--data", data, "--cf", cf, "--out", s1, "--seed", args.seed,
                        *threads], s1 / "joint.npy")
        if not runner.dry:
            keep_files(s1, kept / "stage1", ("alignment.json", "seconds-joint.npy.json"))
    stage2 = ["allmrec", "stage2", "--data", data, "--cf", cf, "--backbone", args.backbone, "--dataset-name",
              args.dataset, "--max-train-rows", args.train_rows, "--batch-size", "4", "--micro-batch-size", "2",
              "--seed", args.seed, "--resume", *threads]
    selection = ["--select-every", args.select_every, "--select-rows", args.select_rows, "--select-patience",
                 args.select_patience]
    trained = {"allmrec": [*selection, "--stage1", s1, "--lr", args.projector_lr],
               "llm-only-lora": [*selection, "--no-soft-tokens", "--lr", args.lora_lr],
               "llm-only-zero-shot": ["--no-soft-tokens", "--zero-shot"]}
    evaluation = ["allmrec", "eval", "--data", data, "--rows", args.test_rows, "--seed", args.seed, "--json",
                  *threads]
    for arm in arms:
        out = work / arm
        if arm == "sasrec":
            judged = ["--cf", cf]
        else:
            run(f"{arm} stage 2", [*stage2, "--out", out, *trained[arm]], out / "allmrec.json")
            judged = ["--model", out, *(["--lenient"] if args.lenient else [])]
        if not runner.dry:
            out.mkdir(parents=True, exist_ok=True)  # the test's standard output goes there (SASRec: --cf elsewhere)
        run(f"{arm} test", [*evaluation, *judged, "--hits", out / "test_hits.parquet"], out / "test_hits.parquet",
            stdout=out / "test_eval.json")
        if not runner.dry:
            keep_files(out, kept / arm,
                       ("test_eval.json", "test_hits.parquet", "seconds-test_hits.parquet.json", "allmrec.json",
                        "seconds-allmrec.json.json", "selection.json", "train/train_log.csv"))
            if arm == "sasrec":  # its training: metrics and time (when trained here)
                keep_files(cf, kept / arm, ("test_metrics.json", "seconds-test_metrics.json.json"))


def finished_arms(results: Path) -> dict[str, dict]:
    """Each finished arm's kept results (under ``results``): the evaluation record, the per-row hits, the
    validation rounds and the training log."""
    arms = {}
    for name in ARMS:
        kept = results / name
        if not (kept / "test_hits.parquet").exists():
            continue
        rounds = kept / "selection.json"
        arms[name] = {"record": json.loads((kept / "test_eval.json").read_text()),
                      "hits": pd.read_parquet(kept / "test_hits.parquet"),
                      "rounds": json.loads(rounds.read_text()) if rounds.exists() else None,
                      "log": pd.read_csv(kept / "train_log.csv") if (kept / "train_log.csv").exists() else None}
    return arms


def paired(a: pd.DataFrame, b: pd.DataFrame, group: str) -> tuple[float, float, int]:
    """Mean per-row Hit@1 difference a - b over the group's rows, its 95% half-width, and the rows."""
    from recalign.eval.metrics import half_width_95

    if len(a) != len(b) or not (a["target"].to_numpy() == b["target"].to_numpy()).all():
        raise ValueError("the two arms were judged on different rows: rerun both with the same --test-rows")
    mask = np.ones(len(a), dtype=bool) if group == "all" else a[group].to_numpy()
    difference = a["hit"].to_numpy()[mask].astype(float) - b["hit"].to_numpy()[mask].astype(float)
    return float(difference.mean()) if len(difference) else float("nan"), half_width_95(difference), int(mask.sum())


def verdict(mean: float, half: float, rows: int) -> str:
    """Whether a claimed gain (a > b) reproduces, contradicts, or what power would settle it."""
    if mean - half > 0:
        return "**reproduces** (the interval excludes zero, above)"
    if mean + half < 0:
        return "**contradicts** (the interval excludes zero, below)"
    if mean == 0 or not math.isfinite(half):
        return "inconclusive (no difference measured)"
    needed = math.ceil(rows * (half / abs(mean)) ** 2)  # the half-width shrinks as 1/sqrt(rows)
    return (f"inconclusive: a difference of this size would need about {needed:,} such rows for its interval to "
            "exclude zero")


def render(args, started: str, runner: CommandRunner, arms: dict[str, dict]) -> str:
    lines = [f"# A-LLMRec against its baselines on {args.dataset}, with power", "",
             f"Produced by `{shown_command('allmrec_quality.py')}` from the repository root (report written "
             f"{started}), on {machine()}, threads {args.threads}, precision `auto` (fp32 where the CPU has no native "
             "bf16). Every step is the `recalign` command listed under *Commands*, run one at a time; each finished "
             f"arm's small result files are kept under `{shown_path(args.results / args.dataset)}/`, and the "
             "report is rewritten from them, so arms finished in earlier sittings appear with the times measured "
             "then.", "", *([args.note, ""] if args.note else []), *setting(args), "",
             "## Results (test Hit@1 over 20 candidates)", ""]
    if not arms:
        return "\n".join([*lines, "No arm has finished yet.", ""])
    lines += ["| arm | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for name, arm in arms.items():
        groups = arm["record"]["groups"]
        lines.append(f"| {name} | " + " | ".join(f"{groups[g]['Hit@1']:.4f} ± {groups[g]['ci95']:.4f} "
                                                  f"({groups[g]['rows']:,})" for g in GROUPS) + " |")
    lenient = {name: arm["record"]["groups"]["all"]["Hit@1 lenient"] for name, arm in arms.items()
               if "Hit@1 lenient" in arm["record"]["groups"]["all"]}
    lines += ["", "Rows per group in parentheses; ± is the 95% interval over rows. A random pick scores 0.05.",
              *(["Lenient Hit@1 (the paper's free generation and substring match), all rows: "
                 + ", ".join(f"{k} {v:.4f}" for k, v in lenient.items()) + "."] if lenient else []), "",
              *(f"- **{name}**: {ARMS[name]}." for name in arms), "", *paired_section(arms), "",
              "## Against the paper's claims", "",
              "| claim | measured difference (rows) | verdict |", "|---|---|---|"]
    for a, b, group, claim in CLAIMS:
        if a in arms and b in arms:
            mean, half, rows = paired(arms[a]["hits"], arms[b]["hits"], group)
            lines.append(f"| {claim} | {mean:+.4f} ± {half:.4f} ({rows:,}) | {verdict(mean, half, rows)} |")
    lines += ["", PAPER, "", *rounds_section(arms, args), *times_section(args.results / args.dataset, arms),
              "## Commands", "", *runner.commands_block(), ""]
    return "\n".join(lines)


def shown_path(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def setting(args) -> list[str]:
    return [
        "## Setting", "",
        f"- **Data**: amazon18 {args.dataset} as shipped (10,000 / 5,000 / 5,000 rows of a 10-item history and its "
        "target), prepared by `recalign data prepare`. SASRec and stage 1 train on every training row; the stage-2 "
        f"arms on the first **{args.train_rows:,}** training prompts (one epoch, batch 4, fresh candidates per "
        f"row); the test is the first **{args.test_rows:,}** test rows.",
        "- **Protocol** (the paper's): per row the target and 19 items sampled uniformly outside the history, "
        f"shuffled (seed {args.seed}: the same candidate sets for every arm); **Hit@1**. The LLM arms decode greedily "
        "through the item index restricted to the candidates' titles, so every answer is a candidate (a target "
        "sharing its title with another candidate counts as a miss: pessimistic); SASRec ranks the same candidates "
        "by its scores (ties pessimistic).",
        "- **Breakdowns**: warm / cold items are rows whose target's training interaction count is in the top / "
        "bottom 35% of the items' counts (ties at the quantile included); cold users are rows whose user has no "
        "training row.",
        f"- **LLM**: `{args.backbone}` (`smollm2-135m`: SmolLM2-135M-Instruct) for the three LLM arms.",
        "- **Stage 1**: the paper's autoencoders over SASRec's item embeddings and cached all-MiniLM-L6-v2 text "
        "embeddings (frozen; the paper fine-tunes SBERT), the official loss weights, 10 epochs.",
        f"- **Stage 2, selected on validation**: after every {args.select_every} optimiser steps the model picks "
        f"among the candidates of the first {args.select_rows} validation rows (the same seeded candidate sets each "
        f"round); the best round's model is the one tested; {args.select_patience} rounds without a Hit@1 gain above "
        "0.001 stop the training. A-LLMRec: the LLM frozen, only F_U and F_I train (AdamW lr "
        f"{args.projector_lr}). LLM-only (LoRA): r 8 on q/k/v/o, lr {args.lora_lr}. Learning rates are fixed, not "
        "tuned (neither on validation nor on test).",
    ]


def paired_section(arms: dict[str, dict]) -> list[str]:
    pairs = [(a, b) for a, b in PAIRS if a in arms and b in arms]
    if not pairs:
        return []
    lines = ["## Paired differences (same rows, same candidates)", "",
             "Mean per-row Hit@1 difference with its 95% interval (rows in parentheses).", "",
             "| difference | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for a, b in pairs:
        cells = []
        for group in GROUPS:
            mean, half, rows = paired(arms[a]["hits"], arms[b]["hits"], group)
            cells.append(f"{mean:+.4f} ± {half:.4f} ({rows:,})")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    if "allmrec" in arms and "sasrec" in arms:
        cold = arms["allmrec"]["hits"]["cold items"].to_numpy()
        a, s = (arms[name]["hits"]["hit"].to_numpy()[cold].mean() for name in ("allmrec", "sasrec"))
        mean, half, rows = paired(arms["allmrec"]["hits"], arms["sasrec"]["hits"], "cold items")
        lines += ["", f"**A-LLMRec's cold-item Hit@1 against SASRec's on the same {rows:,} cold rows**: {a:.4f} vs "
                  f"{s:.4f}, paired difference {mean:+.4f} ± {half:.4f}."]
    return lines


def times_section(results: Path, arms: dict[str, dict]) -> list[str]:
    """Each kept step's time, measured when it ran (CommandRunner's seconds files, kept with the results)."""
    steps = [("SASRec train", "sasrec", "test_metrics.json"), ("stage 1", "stage1", "joint.npy"),
             *((f"{arm} {what}", arm, done) for arm in arms
               for what, done in (("stage 2", "allmrec.json"), ("test", "test_hits.parquet")))]
    rows = []
    for name, folder, done in steps:
        timing = results / folder / f"seconds-{done}.json"
        if timing.exists():
            rows.append(f"| {name} | {json.loads(timing.read_text())['seconds'] / 60:.1f} |")
    return (["## Step times", "", "| step | minutes |", "|---|---|", *rows, "", "Times include loading the models, "
             "the validation rounds (stage 2) and writing the outputs.", ""] if rows else [])


def rounds_section(arms: dict[str, dict], args) -> list[str]:
    lines = []
    for name in STAGE2:
        rounds = arms.get(name, {}).get("rounds")
        if not rounds:
            continue
        log = arms[name]["log"]
        kept = [r for r in rounds if r["kept"]][-1]
        lines += [f"### {name}: validation rounds", "", "| optimiser step | minutes trained | valid Hit@1 | kept |",
                  "|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['seconds'] / 60:.1f} | {r['Hit@1']:.4f} | {'yes' if r['kept'] else ''} |"
                  for r in rounds]
        planned = math.ceil(args.train_rows / 4)
        stopped = rounds[-1]["step"] < planned
        lines += ["", f"Kept: step {kept['step']} (valid Hit@1 {kept['Hit@1']:.4f} on {args.select_rows} rows). "
                  + (f"Stopped by patience at step {rounds[-1]['step']} of {planned}." if stopped
                     else f"Trained all {planned} steps." + (" The last round was the best: a longer run might "
                                                             "still gain." if rounds[-1]["kept"] else ""))
                  + (f" Training loss {log['loss'].iloc[:10].mean():.3f} over the first ten steps, "
                     f"{log['loss'].iloc[-10:].mean():.3f} over the last ten." if log is not None and len(log) else ""),
                  ""]
    return (["## Stage 2 trained until validation Hit@1 stops rising", "", "Minutes trained exclude the validation "
             "rounds' decoding.", "", *lines] if lines else [])


if __name__ == "__main__":
    sys.exit(main())
