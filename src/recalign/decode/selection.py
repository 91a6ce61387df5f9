"""Model selection while fine-tuning: train a few epochs at a time, judge each round by a ranking metric of the
constrained search on held-out rows, and keep the best model (TCA4Rec's HR@3 on the valid rows).

The metric is item-level by default (strict: a target sharing its title with other items ranks last among
them); ``lenient`` judges the reference's identifier match instead (any item with the target's title counts).
``patience`` stops after that many judged rounds without a gain of more than ``min_delta`` (the reference:
Lightning's EarlyStopping on val HR@3, patience 3, min_delta 0.001); 0 trains every epoch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import Dataset
from ..llm.recommender import LLMRecommender
from ..llm.rounds import Patience, Rounds, train_in_rounds
from ..llm.train import LossHook, SFTConfig, SFTExample, SFTResult, launch_state
from .beam import BeamConfig
from .recommend import evaluate_llm


@dataclass
class Selection:
    every: int = 0  # judge every N epochs and keep the best model (0: keep the last one)
    metric: str = "HR@3"  # HR@K, NDCG@K or MRR@K; judged with K beams
    split: str = "valid"
    rows: int | None = None  # the split's first N rows (None: all)
    lenient: bool = False  # judge the identifier match (the reference), not item-level ranks
    patience: int = 0  # stop after this many rounds without a gain above min_delta (0: never)
    min_delta: float = 0.001

    def check(self, dataset: Dataset) -> tuple[int, ...]:
        """(K,) of the metric; raises ValueError on settings this dataset cannot honour, before any training."""
        name, _, k = self.metric.partition("@")
        if self.every < 0:
            raise ValueError(f"select every must be 0 (off) or a number of epochs, not {self.every}")
        if name not in ("HR", "NDCG", "MRR") or not k.isdigit() or int(k) < 1:
            raise ValueError(f"the selection metric takes HR@K, NDCG@K or MRR@K with K >= 1, not {self.metric!r}")
        if self.split not in dataset.examples or dataset.table(self.split).num_rows == 0:
            raise ValueError(f"selection split {self.split!r} is not a split with rows in this dataset "
                             f"({', '.join(dataset.examples)})")
        if self.rows is not None and self.rows < 1:
            raise ValueError("selection rows must be at least 1")
        if self.patience < 0:
            raise ValueError(f"selection patience must be 0 (off) or a number of rounds, not {self.patience}")
        return (int(k),)

    def patience_rule(self) -> Patience:
        return Patience(self.patience, self.min_delta)

    def stale_rounds(self, history: list[dict]) -> int:
        """Judged rounds since the last gain above ``min_delta`` (EarlyStopping's wait count)."""
        return self.patience_rule().stale_rounds([row[self.metric] for row in history])

    def stops(self, history: list[dict]) -> bool:
        return self.patience_rule().stops([row[self.metric] for row in history])


def train_with_selection(recommender: LLMRecommender, dataset: Dataset, examples: list[SFTExample],
                         sft: SFTConfig, out: Path, selection: Selection, loss_hook: LossHook | None = None,
                         resume: bool = False, log: Callable[[str], None] = print) -> SFTResult:
    """Trains ``selection.every`` epochs at a time; after each round the metric is computed on the selection
    split and the best model so far is saved in ``out`` (``llm.rounds``: rounds already judged are kept in
    ``out/selection.json``, so resuming neither repeats nor re-judges them). Under ``accelerate launch`` every
    process takes part (the judging is sharded); one saves."""
    ks = selection.check(dataset)
    state = launch_state()

    def judge() -> float:
        judged = evaluate_llm(recommender, dataset, selection.split, ks, BeamConfig(num_beams=ks[0]), selection.rows,
                              progress=state.is_main_process)
        return (judged.identifier_metrics if selection.lenient else judged.metrics)[selection.metric]

    rounds = Rounds.every(selection.every, sft.epochs, "epoch", math.ceil(len(examples) / sft.batch_size),
                          selection.metric, label=f"{selection.split} {selection.metric}")
    return train_in_rounds(recommender, examples, sft, out, rounds, judge, selection.patience_rule(), loss_hook,
                           resume, log)
