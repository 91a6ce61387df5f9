"""TCA4Rec's four arms at CPU scale: plain SFT, MSL, MSL + TCA and SFT + TCA on the same rows, seeds and budget.

For each dataset: SASRec with the ``tca4rec`` preset (the paper's CF model) trained on all training rows; then, per
arm, SmolLM2-135M-Instruct with LoRA (r 8, alpha 16 on q/k/v/o) on the first ``--train-rows`` training rows for
``--epochs`` epochs, and constrained 10-beam search on the first ``--test-rows`` test rows. Each finished arm is
kept in ``WORK/DATASET/ARM/result.json`` (with its per-row ranks), so an interrupted run picks up where it stopped.

    .venv/bin/python benchmarks/tca_quality.py --train-rows 800 --test-rows 200 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from common import REPO, machine, prepare_amazon18, write_section
from tca_overhead import DOC, DOC_TITLE

KS = (1, 5, 10)
DOMAINS = {"Toys_and_Games": "games", "Office_Products": "office products"}
# arm -> (TCA alpha, MSL): TCA4Rec's Table 2 rows
ARMS = {"sft": (0.0, False), "msl": (0.0, True), "msl-tca": (0.1, True), "sft-tca": (0.1, False)}
ARM_NAMES = {"sft": "plain SFT", "msl": "MSL (tau 4.5)", "msl-tca": "MSL + TCA (alpha 0.1)",
             "sft-tca": "SFT + TCA (alpha 0.1)"}


def run_arm(arm: str, dataset, cf_model, args, out: Path) -> dict:
    from recalign.align.tca import TCAConfig, TCALoss
    from recalign.decode import BeamConfig
    from recalign.decode.recommend import evaluate_llm
    from recalign.llm.recommender import LLMRecommender, RecommenderConfig
    from recalign.llm.train import SFTConfig, sft_train

    alpha, msl = ARMS[arm]
    config = RecommenderConfig(backbone="smollm2-135m", precision="bf16", domain=DOMAINS[args.dataset_name],
                               seed=args.seed)
    recommender = LLMRecommender.create(dataset, config)
    tca = TCAConfig(alpha=alpha, msl=msl, tau=args.tau)
    hook = TCALoss.for_config(cf_model, recommender.index, tca)
    examples = recommender.examples(dataset, "train", args.train_rows, tca.label_mask)
    sft = SFTConfig(epochs=args.epochs, batch_size=16, micro_batch_size=4, lr=args.lr, precision="bf16",
                    seed=args.seed, checkpoint_every=10)
    t0 = time.perf_counter()
    result = sft_train(recommender.model, examples, sft, out / "train", loss_hook=hook, resume=True,
                       pad_id=recommender.pad_id)
    train_seconds = time.perf_counter() - t0
    recommender.save_pretrained(out)
    trained = LLMRecommender.from_pretrained(out, dataset)
    evaluation = evaluate_llm(trained, dataset, "test", KS, BeamConfig(num_beams=10, batch_size=8), args.test_rows)
    record = {"arm": arm, "alpha": alpha, "msl": msl, "tau": args.tau, "metrics": evaluation.metrics,
              "ci95": evaluation.ci95, "identifier_metrics": evaluation.identifier_metrics,
              "item_ranks": [None if not np.isfinite(r) else int(r) for r in evaluation.item_ranks],
              "tokens_per_second": result.tokens_per_second, "train_seconds": train_seconds,
              "users_per_second": evaluation.users_per_second, "rows": len(examples),
              "final_losses": [row["loss"] for row in result.log[-3:]]}
    (out / "result.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def ranks(record: dict) -> np.ndarray:
    return np.array([np.inf if r is None else r for r in record["item_ranks"]], dtype=float)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--train-rows", type=int, default=800)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--tau", type=float, default=4.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_tca_quality")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/tca_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)

    from recalign.cf import TrainConfig, build_model, train
    from recalign.data import load_dataset
    from recalign.eval.metrics import Z_95, confidence_95, per_example, ranking_metrics, ranks_from_scores
    from recalign.eval.protocols import split_histories

    started = datetime.now(timezone.utc)
    names = [f"{m}@{k}" for m in ("HR", "NDCG") for k in KS]
    sections = []
    for name in args.datasets:
        args.dataset_name = name
        work = args.work_dir / f"{name}-{args.train_rows}x{args.epochs}"
        dataset = load_dataset(prepare_amazon18(name, args.work_dir / "data" / name))
        cf_model = build_model("sasrec", dataset.n_items, preset="tca4rec")
        train(cf_model, dataset, TrainConfig(seed=args.seed), args.work_dir / "cf" / name, resume=True,
              progress=False)
        test_histories = split_histories(*dataset.histories("test"))[:args.test_rows]
        targets = dataset.table("test").column("target").to_numpy()[:args.test_rows].astype(np.int64)
        cf_ranks = ranks_from_scores(cf_model.score(test_histories), targets)

        records = {}
        for arm in args.arms:
            path = work / arm / "result.json"
            records[arm] = json.loads(path.read_text()) if path.exists() else run_arm(arm, dataset, cf_model, args,
                                                                                      work / arm)
            print(f"{name} {arm}: " + ", ".join(f"{n} {records[arm]['metrics'][n]:.4f}" for n in names), flush=True)

        table = ["| arm | " + " | ".join(names) + " | paired NDCG@10 vs plain SFT | train tokens/s |",
                 "|---|" + "---|" * (len(names) + 2)]
        for arm, record in records.items():
            cells = " | ".join(f"{record['metrics'][n]:.4f} ±{record['ci95'][n]:.4f}" for n in names)
            paired = "—"
            if arm != "sft" and "sft" in records:
                diff = (per_example(ranks(record), 10)["NDCG@10"] - per_example(ranks(records["sft"]), 10)["NDCG@10"])
                paired = f"{diff.mean():+.4f} ± {Z_95 * diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
            table.append(f"| {ARM_NAMES[arm]} | {cells} | {paired} | {record['tokens_per_second']:.0f} |")
        cf_metrics, cf_ci = ranking_metrics(cf_ranks, KS), confidence_95(cf_ranks, KS)
        table.append("| *SASRec `tca4rec` preset (the CF model, full ranking)* | "
                     + " | ".join(f"{cf_metrics[n]:.4f} ±{cf_ci[n]:.4f}" for n in names) + " | | |")
        rows = next(iter(records.values()))["rows"]
        sections.append(f"### {name} ({rows:,} training rows, {len(targets)} test rows)\n\n" + "\n".join(table))

    text = f"""## Quality at CPU scale (`benchmarks/tca_quality.py`)

Produced by `{command}` (started {started:%Y-%m-%d %H:%M} UTC) on {machine()}, torch {torch.__version__},
{args.threads} threads. Every arm: SmolLM2-135M-Instruct, bf16, LoRA r 8 / alpha 16 / dropout 0.05 on q, k, v, o, the
TCA4Rec prompt, the first {args.train_rows:,} training rows, {args.epochs} epoch(s), batch 16 (micro-batch 4), AdamW lr
{args.lr:g} with 20 warm-up steps, seed {args.seed}, the fixed label mask (every title token and EOS trained); then
constrained 10-beam search over the whole catalogue on the first {args.test_rows} test rows. CF model: SASRec with the
`tca4rec` preset trained on all 10,000 training rows (early stopping on validation NDCG@10), beta 1. MSL: softmax
over the trie's valid next tokens at tau {args.tau:g}. No model selection (one epoch); the paper's GPU setting
(10 epochs, HR@3 selection) is `recipes/tca4rec_paper.sh`.
± is the 95% interval over test rows; the paired column is the mean per-row NDCG@10 difference with its 95% interval.
Ranks are item-level and pessimistic (items sharing the generated title rank together, the target last).

{(chr(10) * 2).join(sections)}

At this budget ({args.train_rows:,} rows, one epoch, a 135M model) the intervals are wide: read the paired column,
not the order of the means.
"""
    write_section(DOC, "quality", text, DOC_TITLE)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
