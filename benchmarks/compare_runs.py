"""Compares two `recalign llm train` output folders: the per-step losses, the saved weights, the test metrics and
the model-selection rounds (when there are any).

    python benchmarks/compare_runs.py RUN_A RUN_B
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file


def weights(run: Path) -> dict:
    """The saved weights: the merged model's (every shard) or the LoRA adapter's."""
    folder = run / "model" if (run / "model").exists() else run / "adapter"
    return {name: tensor for file in sorted(folder.glob("*.safetensors")) for name, tensor in load_file(file).items()}


def main(a: Path, b: Path) -> None:
    losses = [pd.read_csv(run / "train" / "train_log.csv")["loss"] for run in (a, b)]
    for run, loss in zip((a, b), losses):
        print(f"loss {run}: {[round(x, 6) for x in loss]}")
    print(f"max |loss difference|: {(losses[0] - losses[1]).abs().max():.3g}")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys(), "the runs saved different tensors"
    print(f"max |weight difference| over {len(wa)} tensors: "
          f"{max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa):.3g}")
    metrics = [json.loads((run / "test_metrics.json").read_text())["metrics"] for run in (a, b)]
    print(f"test metrics equal: {metrics[0] == metrics[1]} ({metrics[0]})")
    if (a / "selection.json").exists():
        rounds = [json.loads((run / "selection.json").read_text()) for run in (a, b)]
        print(f"selection rounds equal: {rounds[0] == rounds[1]} ({rounds[0]})")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
