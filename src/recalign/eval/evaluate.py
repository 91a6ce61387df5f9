"""Evaluating a scorer on a split under a declared protocol, with 95% intervals beside every metric."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..data import Dataset
from .baselines import make_baseline
from .metrics import DEFAULT_KS, confidence_95, ranking_metrics
from .protocols import Scorer, full_ranking_ranks, sampled_ranks, split_histories


@dataclass
class Protocol:
    """``full``: rank the whole catalogue; ``sampled``: rank 1 positive among ``n_negatives`` + 1 candidates."""

    kind: str = "full"
    exclude_history: bool = False
    n_negatives: int = 19
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("full", "sampled"):
            raise ValueError(f"protocol must be 'full' or 'sampled', got {self.kind!r}")


@dataclass
class Evaluation:
    metrics: dict[str, float]
    ci95: dict[str, float]
    n_examples: int
    ranks: np.ndarray


def evaluate(scorer: Scorer, dataset: Dataset, split: str = "test", ks=DEFAULT_KS,
             protocol: Protocol | None = None) -> Evaluation:
    protocol = protocol or Protocol()
    histories = split_histories(*dataset.histories(split))
    targets = dataset.table(split).column("target").to_numpy().astype(np.int64)
    if protocol.kind == "full":
        ranks = full_ranking_ranks(scorer, histories, targets, protocol.exclude_history)
    else:
        ranks = sampled_ranks(scorer, histories, targets, dataset.n_items, protocol.n_negatives, protocol.seed)
    return Evaluation(ranking_metrics(ranks, ks), confidence_95(ranks, ks), len(ranks), ranks)


def evaluate_baselines(dataset: Dataset, split: str = "test", names=("popularity", "random", "markov"),
                       ks=DEFAULT_KS, protocol: Protocol | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metrics of each named baseline, e.g. ``result["popularity"]["HR@10"]``."""
    return {name: evaluate(make_baseline(name, dataset, seed), dataset, split, ks, protocol).metrics for name in names}


def protocol_record(protocol: Protocol, split: str, ks) -> dict:
    return {**asdict(protocol), "split": split, "ks": list(ks), "ties": "pessimistic"}
