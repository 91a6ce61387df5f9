"""Model selection while fine-tuning: train a few epochs at a time, judge each round by a ranking metric of the
constrained search on held-out rows, and keep the best model (TCA4Rec's HR@3 on the valid rows).

The metric is item-level by default (strict: a target sharing its title with other items ranks last among
them); ``lenient`` judges the reference's identifier match instead (any item with the target's title counts).
``patience`` stops after that many judged rounds without a gain of more than ``min_delta`` (the reference:
Lightning's EarlyStopping on val HR@3, patience 3, min_delta 0.001); 0 trains every epoch."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import Dataset
from ..llm.recommender import LLMRecommender
from ..llm.train import LossHook, SFTConfig, SFTExample, SFTResult, launch_state, sft_train
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

    def stale_rounds(self, history: list[dict]) -> int:
        """Judged rounds since the last gain above ``min_delta`` (EarlyStopping's wait count)."""
        best, wait = float("-inf"), 0
        for row in history:
            if row[self.metric] - self.min_delta > best:
                best, wait = row[self.metric], 0
            else:
                wait += 1
        return wait

    def stops(self, history: list[dict]) -> bool:
        return bool(self.patience) and self.stale_rounds(history) >= self.patience


def train_with_selection(recommender: LLMRecommender, dataset: Dataset, examples: list[SFTExample],
                         sft: SFTConfig, out: Path, selection: Selection, loss_hook: LossHook | None = None,
                         resume: bool = False, log: Callable[[str], None] = print) -> SFTResult:
    """Trains ``selection.every`` epochs at a time; after each round the metric is computed on the selection
    split and the best model so far is saved in ``out``. Rounds already judged are kept in
    ``out/selection.json``, so resuming neither repeats nor re-judges them. Under ``accelerate launch`` every
    process takes part (the judging is sharded); one saves."""
    ks = selection.check(dataset)
    state = launch_state()
    record_path = out / "selection.json"
    history = json.loads(record_path.read_text()) if resume and record_path.exists() else []
    steps_per_epoch = math.ceil(len(examples) / sft.batch_size)
    ends = sorted({*range(selection.every, sft.epochs, selection.every), sft.epochs})
    result = None
    for epoch in ends:
        if selection.stops(history):
            log(f"no {selection.split} {selection.metric} gain above {selection.min_delta} in {selection.patience} "
                f"rounds: stopped after epoch {history[-1]['epoch']}")
            break
        if any(row["epoch"] == epoch for row in history):
            continue
        result = sft_train(recommender.model, examples, replace(sft, max_steps=epoch * steps_per_epoch),
                           out / "train", loss_hook=loss_hook, resume=resume or bool(history) or epoch != ends[0],
                           pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
        if result.steps != epoch * steps_per_epoch:  # the checkpoint is past this round: its weights are later ones
            raise ValueError(f"the checkpoint in {out / 'train'} is at step {result.steps}, past the end of epoch "
                             f"{epoch} ({epoch * steps_per_epoch}); resume with the selection interval of the "
                             "interrupted run")
        recommender.model.eval()
        judged = evaluate_llm(recommender, dataset, selection.split, ks, BeamConfig(num_beams=ks[0]), selection.rows,
                              progress=state.is_main_process)
        score = (judged.identifier_metrics if selection.lenient else judged.metrics)[selection.metric]
        best = max((row[selection.metric] for row in history), default=float("-inf"))
        history.append({"epoch": epoch, selection.metric: score, "kept": score > best})
        if state.is_main_process:
            if score > best:
                recommender.save_pretrained(out)
            record_path.write_text(json.dumps(history, indent=2) + "\n")
            log(f"epoch {epoch}: {selection.split} {selection.metric} {score:.4f}"
                + (" (best so far, saved)" if score > best else ""))
        state.wait_for_everyone()
    if result is None:  # every round was judged before this call: the run had finished (or stopped early)
        last = replace(sft, max_steps=history[-1]["epoch"] * steps_per_epoch) if selection.stops(history) else sft
        result = sft_train(recommender.model, examples, last, out / "train", loss_hook=loss_hook, resume=True,
                           pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
    return result
