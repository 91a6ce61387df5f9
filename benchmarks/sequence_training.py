"""The sequence objective against the row-per-target objective at the same wall-clock training budget.

Per dataset, two arms train SmolLM2-135M-Instruct on the same users' training items, one heavy step at a time:

- ``row``: the papers' setting, one row per training target with its history in the prompt (MiniOneRec's prompt
  over SIDs on Industrial, TCA4Rec's over titles on Office);
- ``sequence``: one row per window of a user's items (the ``sequence`` layout), every item after the first
  trained, rows packed into ``--pack-length`` tokens.

Industrial_and_Scientific: minionerec data prepared with ``--minionerec-train histories`` (train = the items before
each user's first valid target), shipped SIDs, full fine-tuning (MiniOneRec's setting). Office_Products: amazon18
titles, LoRA (TCA4Rec's setting). Each arm trains in chunks (``sft_train`` with ``max_steps`` and resume: a chunk
interrupted restarts from its checkpoint), the first of ``--chunk-steps`` steps and then ``--points`` ending at
equally spaced times, and after each chunk decodes the first ``--valid-rows`` validation rows (constrained 10-beam
search): NDCG@10 against training seconds (decoding excluded) until ``--budget-minutes`` of training. The curve of
each arm is kept in ``work/<dataset>/<arm>/curve.json`` so the benchmark resumes where it stopped; ``--lock`` takes
a file lock around each chunk and evaluation, so other heavy work on the machine waits between them rather than
sharing the cores.

    .venv/bin/python benchmarks/sequence_training.py --budget-minutes 10 --threads 2
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from common import REPO, CommandRunner, add_runner_arguments, machine, shown_command

SHARED = REPO.parent / "shared" / "data"
SOURCES = {"Industrial_and_Scientific": ("minionerec", SHARED / "minionerec" / "Industrial_and_Scientific"),
           "Office_Products": ("amazon18", SHARED / "amazon18" / "Office_Products")}
ROW_PROMPT = {"Industrial_and_Scientific": "minionerec", "Office_Products": "tca4rec"}
DOC = REPO / "docs" / "benchmarks" / "sequence.md"


@contextmanager
def locked(path: Path | None):
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(runner: CommandRunner, args, name: str) -> tuple[Path, Path | None]:
    fmt, source = SOURCES[name]
    data = args.work / name / "data"
    extra = ["--minionerec-train", "histories"] if fmt == "minionerec" else []
    runner.run(f"{name}: data", ["data", "prepare", "--format", fmt, "--source", str(source), "--out", str(data),
                                 *extra], data / "manifest.json")
    if fmt != "minionerec":
        return data, None
    sids = args.work / name / "sids"
    runner.run(f"{name}: SIDs", ["index", "import", "--data", str(data), "--out", str(sids)], sids / "sids.json")
    return data, sids


def arm_settings(args, name: str, arm: str):
    from recalign.llm.recommender import RecommenderConfig
    from recalign.llm.train import SFTConfig

    sid = name == "Industrial_and_Scientific"
    recommender = RecommenderConfig(backbone=args.backbone, precision="fp32", finetune="full" if sid else "lora",
                                    prompt="sequence" if arm == "sequence" else ROW_PROMPT[name],
                                    domain="industrial and scientific items" if sid else "office products",
                                    max_history=10, seed=args.seed, identifier="sid" if sid else "title")
    train = SFTConfig(epochs=args.epochs, batch_size=args.batch_size, micro_batch_size=args.micro_batch_size,
                      lr=args.sid_lr if sid else args.title_lr, warmup_steps=args.warmup_steps, precision="fp32",
                      seed=args.seed, checkpoint_every=args.chunk_steps, log_every=0,
                      pack_length=args.pack_length if arm == "sequence" else 0)
    return recommender, train


def run_arm(args, name: str, arm: str, data: Path, sids: Path | None) -> dict:
    """Trains one arm chunk by chunk until its budget, evaluating after each chunk; resumable."""
    from recalign.data import load_dataset
    from recalign.decode import BeamConfig
    from recalign.decode.recommend import evaluate_llm
    from recalign.index.sid import SemanticIDs
    from recalign.llm.recommender import LLMRecommender
    from recalign.llm.tasks import task_examples
    from recalign.llm.train import sft_train

    out = args.work / name / arm
    out.mkdir(parents=True, exist_ok=True)
    curve_file = out / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.exists() else []
    budget = args.budget_minutes * 60
    if curve and (curve[-1]["train_seconds"] >= budget or args.report_only):
        return summary(curve, arm)
    if args.report_only:
        return None
    dataset = load_dataset(data)
    recommender_config, train = arm_settings(args, name, arm)
    recommender = LLMRecommender.create(dataset, recommender_config,
                                        sids=SemanticIDs.from_pretrained(sids, dataset) if sids else None)
    examples = task_examples(recommender, dataset, "train", ("next_item",), rows="sequence" if arm == "sequence"
                             else "target")["next_item"]
    targets_per_row = sum(len(e.target_spans()) for e in examples) / len(examples)
    tokens_per_row = sum(len(e.prompt_ids) + len(e.target_ids) for e in examples) / len(examples)
    while not curve or curve[-1]["train_seconds"] < budget:
        done = curve[-1]["steps"] if curve else 0
        # after a first chunk of --chunk-steps, chunks end near the next of --points equally spaced times
        rate = curve[-1]["steps"] / curve[-1]["train_seconds"] if curve else 0
        mark = min(budget, budget * len(curve) / args.points) if curve else 0
        steps = max(done + 1, math.ceil(mark * rate)) if curve else args.chunk_steps
        with locked(args.lock):
            result = sft_train(recommender.model, examples, replace(train, max_steps=steps), out / "train",
                               resume=True, progress=False, pad_id=recommender.pad_id)
            seconds = sum(row["seconds"] for row in result.log)
            evaluation = evaluate_llm(recommender, dataset, "valid", ks=(10,), config=BeamConfig(num_beams=10),
                                      max_rows=args.valid_rows, progress=False)
        rows = result.steps * train.batch_size
        curve.append({"steps": result.steps, "train_seconds": seconds, "rows": rows,
                      "targets": rows * targets_per_row, "loss": result.log[-1]["loss"],
                      "NDCG@10": evaluation.metrics["NDCG@10"], "NDCG@10_ci95": evaluation.ci95["NDCG@10"],
                      "HR@10": evaluation.metrics["HR@10"], "HR@10_ci95": evaluation.ci95["HR@10"],
                      "valid_rows": evaluation.n_examples, "examples": len(examples),
                      "targets_per_row": targets_per_row, "tokens_per_row": tokens_per_row})
        curve_file.write_text(json.dumps(curve, indent=1) + "\n")
        print(f"[{datetime.now():%H:%M:%S}] {name} {arm}: step {result.steps}, {seconds:.0f} s, "
              f"valid NDCG@10 {evaluation.metrics['NDCG@10']:.4f}", flush=True)
        if result.steps >= train.epochs * -(-len(examples) // train.batch_size):
            break  # every epoch done before the budget
    return summary(curve, arm)


def summary(curve: list[dict], arm: str) -> dict:
    last = curve[-1]
    best = max(curve, key=lambda point: point["NDCG@10"])
    return {"arm": arm, "curve": curve, "targets_per_second": last["targets"] / last["train_seconds"],
            "rows_per_second": last["rows"] / last["train_seconds"], "best": best, "last": last}


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for axis, (name, arms) in zip(axes[0], results.items()):
        for arm, result in arms.items():
            minutes = [p["train_seconds"] / 60 for p in result["curve"]]
            ndcg = [p["NDCG@10"] for p in result["curve"]]
            half = [p["NDCG@10_ci95"] for p in result["curve"]]
            axis.errorbar(minutes, ndcg, yerr=half, marker="o", capsize=3, label=f"{arm} objective")
        axis.set_title(name)
        axis.set_xlabel("training time (minutes, decoding excluded)")
        axis.set_ylabel("validation NDCG@10 (95% interval)")
        axis.set_ylim(bottom=0)
        axis.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(args, runner: CommandRunner, results: dict[str, dict[str, dict]]) -> str:
    lines = ["# Sequence objective vs row objective at the same training time", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine()}, {args.threads} threads, fp32 (this CPU has no "
             "native bf16). Produced by:", "", f"    {shown_command('sequence_training.py')}", "",
             "Each arm trains SmolLM2-135M-Instruct for the same training time (decoding excluded), in steps of "
             f"{args.batch_size} rows; after a first chunk of {args.chunk_steps} steps and then at {args.points} "
             f"equally spaced times the first {args.valid_rows} validation rows are decoded with constrained "
             "10-beam search. Industrial: SIDs, "
             f"full fine-tuning, lr {args.sid_lr}; Office: titles, LoRA r 8, lr {args.title_lr}. Sequence rows "
             f"are packed into {args.pack_length} tokens.", ""]
    if args.report_only:
        lines += ["(This report was rewritten from the kept curves with `--report-only`; the curves come from the same "
                  "command without it.)", ""]
    if args.note:
        lines += [args.note, ""]
    lines += ["| dataset | objective | rows | targets / row | tokens / row | trained targets / s | ratio | steps | "
              "minutes trained | last valid NDCG@10 | best valid NDCG@10 (minute) |", "|" + "---|" * 11]
    for name, arms in results.items():
        base = arms.get("row", {}).get("targets_per_second")
        for arm, r in arms.items():
            last, best = r["last"], r["best"]
            ratio = f"{r['targets_per_second'] / base:.1f}x" if base else "-"
            lines.append(f"| {name} | {arm} | {last['examples']:,} | {last['targets_per_row']:.2f} | "
                         f"{last['tokens_per_row']:.0f} | {r['targets_per_second']:.1f} | {ratio} | {last['steps']} | "
                         f"{last['train_seconds'] / 60:.1f} of {args.budget_minutes:g} | {last['NDCG@10']:.4f} ± "
                         f"{last['NDCG@10_ci95']:.4f} | {best['NDCG@10']:.4f} ± "
                         f"{best['NDCG@10_ci95']:.4f} ({best['train_seconds'] / 60:.1f}) |")
    lines += ["", "![validation NDCG@10 against training time](sequence.png)", "", "## Commands", "",
              *runner.commands_block(), "", "Each arm's points (`curve.json`):", ""]
    for name, arms in results.items():
        for arm, r in arms.items():
            lines.append(f"- {name} / {arm}: " + "; ".join(
                f"{p['train_seconds'] / 60:.1f} min, step {p['steps']}, loss {p['loss']:.3f}, NDCG@10 "
                f"{p['NDCG@10']:.4f} ± {p['NDCG@10_ci95']:.4f}, HR@10 {p['HR@10']:.4f}" for p in r["curve"]))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_runner_arguments(parser, REPO / "runs" / "bench-sequence", DOC)
    parser.add_argument("--datasets", default=",".join(SOURCES))
    parser.add_argument("--arms", default="row,sequence")
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--chunk-steps", type=int, default=10, help="steps of the first chunk (the first point)")
    parser.add_argument("--points", type=int, default=4, help="evaluations after the first, equally spaced in time")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--pack-length", type=int, default=512)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--sid-lr", type=float, default=3e-4)
    parser.add_argument("--title-lr", type=float, default=5e-4)
    parser.add_argument("--valid-rows", type=int, default=200)
    parser.add_argument("--lock", type=Path, default=None, help="a file lock taken around each heavy step")
    parser.add_argument("--report-only", action="store_true", help="write the report from the curves so far")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    runner = CommandRunner(args.work, args.python)
    results: dict[str, dict[str, dict]] = {}
    for name in args.datasets.split(","):
        with locked(args.lock):
            data, sids = prepare(runner, args, name)
        arms = {arm: run_arm(args, name, arm, data, sids) for arm in args.arms.split(",")}
        results[name] = {arm: result for arm, result in arms.items() if result is not None}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = args.out.with_suffix("")  # each arm's curve, the small result committed beside the report
    kept.mkdir(parents=True, exist_ok=True)
    for name, arms in results.items():
        for arm, result in arms.items():
            (kept / f"{name}-{arm}.json").write_text(json.dumps(result["curve"], indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    args.out.write_text(report(args, runner, results))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
