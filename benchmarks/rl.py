"""RL post-training on Industrial_and_Scientific: GRPO over constrained beams with the ranking reward and with a CF
reward, from the same SFT checkpoint at the same budget, against that checkpoint on every test row.

    .venv/bin/python benchmarks/rl.py runs/bench-quality/Industrial_and_Scientific/sid-seq --threads 2

The SFT checkpoint is a SmolLM2 SID recommender (``benchmarks/quality.py``'s ``sid-seq`` arm: the sequence prompt
layout, ``--minionerec-train histories`` data); its dataset folder is ``--data`` (default: beside it). The CF reward
uses a SASRec trained by ``recalign cf train`` on the same data (``--cf``, default: the quality benchmark's
``sasrec`` arm beside the checkpoint, else one trained here). Each RL arm runs ``recalign llm rl`` for ``--steps``
steps of ``--batch-size`` prompts (groups of ``--beams`` constrained beams; ``--resume`` continues an interrupted
arm), then ``recalign llm eval`` on every test row with 10 beams (``--ranks`` keeps the per-row ranks). The SFT
checkpoint's own ranks are read where the quality benchmark left them, else computed here. Every step is a
``CommandRunner`` command: a finished one is skipped, so the benchmark resumes where it stopped.

The report (``docs/benchmarks/rl.md``) gives HR/NDCG@3/5/10 with 95% intervals, the paired per-row difference of
each RL arm against the SFT checkpoint (95% interval: above / below when it excludes 0), the reward and KL curves,
the time per step and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from common import REPO, CommandRunner, add_runner_arguments, machine, shown_command

DOC = REPO / "docs" / "benchmarks" / "rl.md"
KS = (3, 5, 10)
TEST_BEAMS = 10
ARMS = {"ranking": ["--reward", "ranking"], "cf": ["--reward", "cf", "--cf-reward", "score"]}
ABOUT = {"sft": "the SFT checkpoint the RL arms start from",
         "ranking": "GRPO with MiniOneRec's reward: 1 for the target, minus its normalised rank penalty on the other "
                    "beams when the target is among them (0 for every beam otherwise)",
         "cf": "GRPO with the CF reward: each beam's item scored by the SASRec (its logit), normalised within the "
               "group"}


def rl_argv(args, out: Path, arm: str, cf: Path) -> list:
    extra = ARMS[arm] + (["--cf", cf] if arm == "cf" else [])
    return ["llm", "rl", "--model", args.sft, "--data", args.data, "--out", out, *extra, "--beams", args.beams,
            "--batch-size", args.batch_size, "--micro-batch-size", args.micro_batch_size, "--max-steps", args.steps,
            "--lr", args.lr, "--beta", args.beta, "--finetune", args.finetune, "--seed", args.seed,
            "--checkpoint-every", args.checkpoint_every, "--eval-split", "", "--threads", args.threads, "--resume"]


def eval_argv(args, model: Path, ranks: Path) -> list:
    return ["llm", "eval", "--data", args.data, "--model", model, "--k", ",".join(map(str, KS)), "--beams",
            TEST_BEAMS, "--ranks", ranks, "--threads", args.threads, "--json"]


def run(runner: CommandRunner, args) -> dict[str, Path]:
    """Runs what is unfinished; the folders holding each arm's test ranks (and RL log)."""
    work = args.work
    cf = args.cf
    if cf is None:
        beside = args.sft.parent / "sasrec"
        cf = beside if (beside / "config.json").exists() else work / "sasrec"
        if cf == work / "sasrec":
            runner.run("SASRec train", ["cf", "train", "--data", args.data, "--out", cf, "--model", "sasrec",
                                        "--threads", args.threads], cf / "config.json")
    folders = {"sft": work / "sft"}
    sft_ranks = folders["sft"] / "test_ranks.parquet"
    folders["sft"].mkdir(parents=True, exist_ok=True)
    if (args.sft / "test_ranks.parquet").exists() and not sft_ranks.exists():  # left by benchmarks/quality.py
        shutil.copy(args.sft / "test_ranks.parquet", sft_ranks)
    runner.run("SFT test", eval_argv(args, args.sft, sft_ranks), sft_ranks, stdout=folders["sft"] / "test.json")
    for arm in args.arms:
        out = work / f"rl-{arm}"
        runner.run(f"RL {arm} train", rl_argv(args, out, arm, cf), out / "rl.json")
        runner.run(f"RL {arm} test", eval_argv(args, out, out / "test_ranks.parquet"), out / "test_ranks.parquet",
                   stdout=out / "test.json")
        folders[arm] = out
    results = args.out.parent / args.out.stem
    for name, folder in folders.items():  # the small result files, kept beside the report
        kept = results / name
        kept.mkdir(parents=True, exist_ok=True)
        for file in ("test_ranks.parquet", "rl.json", "train/rl_log.csv"):
            if (folder / file).exists():
                shutil.copy(folder / file, kept / Path(file).name)
    return {name: results / name for name in folders}


def report(args, runner: CommandRunner, kept: dict[str, Path]) -> str:
    from recalign.eval.metrics import confidence_95, paired_difference, ranking_metrics, read_ranks
    from recalign.report.report import rl_curves

    ranks = {name: read_ranks(folder / "test_ranks.parquet") for name, folder in kept.items()}
    base = ranks["sft"]
    metrics = [f"{m}@{k}" for k in KS for m in ("HR", "NDCG")]
    lines = [f"{len(base):,} test rows (all), the same for every arm; constrained beam search with {TEST_BEAMS} beams. "
             "± is the 95% interval over rows; the paired rows give each RL arm's mean per-row difference from the "
             "SFT checkpoint with its 95% interval (above / below: the interval excludes 0).", "",
             "| arm | " + " | ".join(metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for name, r in ranks.items():
        values, half = ranking_metrics(r, KS), confidence_95(r, KS)
        lines.append(f"| {name} | " + " | ".join(f"{values[m]:.4f} ± {half[m]:.4f}" for m in metrics) + " |")
    for name, r in ranks.items():
        if name == "sft":
            continue
        cells = []
        for metric in metrics:
            mean, half = paired_difference(r, base, metric)
            verdict = "above" if mean - half > 0 else "below" if mean + half < 0 else "holds 0"
            cells.append(f"{mean:+.4f} ± {half:.4f} ({verdict})")
        lines.append(f"| {name} − sft | " + " | ".join(cells) + " |")
    lines += ["", *[f"- **{name}**: {ABOUT[name]}." for name in ranks], ""]
    logs = {name: kept[name] / "rl_log.csv" for name in args.arms if (kept[name] / "rl_log.csv").exists()}
    if logs:
        plot = f"{args.out.stem}_rewards.png"
        lines += ["## Reward and KL per step", "", *rl_curves(logs, args.out.parent / plot), "",
                  f"![reward and KL]({plot})", ""]
    seconds = {name: s for name, s in runner.seconds.items() if s is not None}
    lines += ["## Setting", "",
              f"- SFT checkpoint: `{args.sft}`; data `{args.data}`.",
              f"- RL: {args.steps} steps of {args.batch_size} prompts (training rows in a seeded order), groups of "
              f"{args.beams} constrained beams, lr {args.lr} (cosine schedule over the whole epoch, so the rate stays "
              f"near its peak over these steps), beta {args.beta}, finetune {args.finetune}, max grad norm 0.3.",
              f"- Machine: {machine()}.",
              "- Times (s): " + ", ".join(f"{name} {s:,.0f}" for name, s in seconds.items()), "",
              "Produced by", "", "```", shown_command("rl.py"), "```", "", "Commands:", "",
              *runner.commands_block()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sft", type=Path, help="the SFT recommender folder (e.g. benchmarks/quality.py's sid-seq)")
    add_runner_arguments(parser, REPO / "runs" / "bench-rl", DOC)
    parser.add_argument("--data", type=Path, help="its dataset folder (default: data/ beside it)")
    parser.add_argument("--cf", type=Path, help="the SASRec of the cf reward (default: sasrec/ beside the SFT "
                                                "checkpoint, else trained here)")
    parser.add_argument("--arms", default="ranking,cf")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--beams", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--finetune", default="full", help="'full' (MiniOneRec's RL) or 'lora'")
    parser.add_argument("--checkpoint-every", type=int, default=10)
    args = parser.parse_args()
    args.sft = args.sft.resolve()
    args.data = (args.data or args.sft.parent / "data").resolve()
    args.arms = [a for a in args.arms.split(",") if a]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; choose among {', '.join(ARMS)}")
    runner = CommandRunner(args.work, args.python)
    kept = run(runner, args)
    text = report(args, runner, kept)
    note = [args.note, ""] if args.note else []
    args.out.write_text("\n".join([f"# RL post-training: GRPO over constrained beams ({args.sft.parent.name})", "",
                              *note, text]) + "\n")
    print(json.dumps({"report": str(args.out)}))


if __name__ == "__main__":
    main()
