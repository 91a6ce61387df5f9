"""Validation-row sweep of a CF model's settings (model selection happens on valid rows, never on test).

Each setting is a comma-separated list of KEY=VALUE model overrides; every run uses the CF benchmark's shared
settings (hidden 64, history 10, last-position loss, at most 50 epochs, patience 10) and prints the best
validation NDCG@10 as one JSON line.

    .venv/bin/python benchmarks/cf_sweep.py --seed 0 dropout=0.2 dropout=0.5 dropout=0.5,n_heads=2 \\
        dropout=0.5,inner=256
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import REPO, prepare_amazon18


def parse(setting: str) -> dict:
    values = {}
    for pair in setting.split(","):
        key, value = pair.split("=")
        values[key] = float(value) if "." in value else int(value) if value.isdigit() else value
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+")
    parser.add_argument("--dataset", default="Toys_and_Games")
    parser.add_argument("--model", default="sasrec")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from recalign.cf import TrainConfig, build_model, train
    from recalign.data import load_dataset

    dataset = load_dataset(prepare_amazon18(args.dataset, REPO / "runs" / "cf_vs_recbole" / "data" / args.dataset))
    for setting in args.settings:
        started = time.time()
        model = build_model(args.model, dataset.n_items, None, hidden=64, max_len=10, positions="last",
                            **parse(setting))
        state = train(model, dataset, TrainConfig(epochs=50, patience=10, seed=args.seed),
                      REPO / "runs" / "cf_sweep" / f"{args.model}-{setting}-seed{args.seed}", progress=False)
        print(json.dumps({"setting": setting, "best_valid_NDCG@10": round(state.best_score, 4),
                          "best_epoch": state.best_epoch, "epochs": state.epoch,
                          "seconds": round(time.time() - started)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
