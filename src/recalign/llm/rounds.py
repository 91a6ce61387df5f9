"""Training in judged rounds: train to the end of a round, judge the model on held-out rows, keep the best round's
model in the output folder, and stop once the score has stopped rising (patience). ``llm train --select-every``
(``decode.selection``: epochs, a ranking metric of the constrained search) and ``allmrec stage2 --select-every``
(optimiser steps, Hit@1 among candidates) both train this way.

The judged rounds are kept in ``out/selection.json``, one row per round: where it ended (``epoch`` or ``step``),
the score, whether its model was kept (the best so far; a tie keeps the earlier one) and, for timed rounds, the
optimiser step and the seconds trained up to it. A resumed run neither repeats nor re-judges them."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .train import LossHook, SFTConfig, SFTExample, SFTResult, launch_state, sft_train

RECORD = "selection.json"


@dataclass(frozen=True)
class Patience:
    rounds: int = 0  # stop after this many judged rounds without a gain above min_delta (0: never)
    min_delta: float = 0.001

    def stale_rounds(self, scores: Sequence[float]) -> int:
        """Judged rounds since the last gain above ``min_delta`` over the best so far (Lightning EarlyStopping's
        wait count)."""
        best, wait = float("-inf"), 0
        for score in scores:
            if score - self.min_delta > best:
                best, wait = score, 0
            else:
                wait += 1
        return wait

    def stops(self, scores: Sequence[float]) -> bool:
        return bool(self.rounds) and self.stale_rounds(scores) >= self.rounds


@dataclass(frozen=True)
class Rounds:
    unit: str  # what a round's end is counted in, the record's first column: "epoch" or "step"
    ends: tuple[int, ...]  # each round's end, in units, increasing
    steps_per_unit: int  # optimiser steps per unit
    metric: str  # the score's name in the record
    timed: bool = False  # also record the optimiser step and the seconds trained (wall time: reruns differ)
    label: str = ""  # the score as the log names it (default: metric)

    @classmethod
    def every(cls, every: int, total: int, unit: str, steps_per_unit: int, metric: str, timed: bool = False,
              label: str = "") -> Rounds:
        """A round every ``every`` units, and one at the end of training (``total`` units)."""
        return cls(unit, tuple(sorted({*range(every, total, every), total})), steps_per_unit, metric, timed, label)


def train_in_rounds(recommender, examples: list[SFTExample], sft: SFTConfig, out: Path, rounds: Rounds,
                    judge: Callable[[], float], patience: Patience, loss_hook: LossHook | None = None,
                    resume: bool = False, log: Callable[[str], None] = print, progress: bool = True) -> SFTResult:
    """Trains ``recommender`` round by round (checkpoints in ``out/train``); after each round ``judge()`` scores the
    model and the best round's recommender is saved in ``out``. Under ``accelerate launch`` every process trains
    and judges (a judge may shard its rows); one saves. Returns the training result of the last round trained."""
    state = launch_state()
    record_path = out / RECORD
    history = json.loads(record_path.read_text()) if resume and record_path.exists() else []
    metric, unit, label = rounds.metric, rounds.unit, rounds.label or rounds.metric
    result = None
    for end in rounds.ends:
        if patience.stops([row[metric] for row in history]):
            log(f"no {label} gain above {patience.min_delta} in {patience.rounds} rounds: stopped after {unit} "
                f"{history[-1][unit]}")
            break
        if any(row[unit] == end for row in history):
            continue
        steps = end * rounds.steps_per_unit
        result = sft_train(recommender.model, examples, replace(sft, max_steps=steps), out / "train",
                           loss_hook=loss_hook, resume=resume or bool(history) or end != rounds.ends[0],
                           progress=progress, pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
        if result.steps != steps:  # the checkpoint is past this round: its weights are later ones
            raise ValueError(f"the checkpoint in {out / 'train'} is at step {result.steps}, past the end of {unit} "
                             f"{end} (step {steps}); resume with the selection interval of the interrupted run")
        recommender.model.eval()
        score = judge()
        best = max((row[metric] for row in history), default=float("-inf"))
        row = {unit: end, metric: score, "kept": score > best}
        if rounds.timed:
            row.update(step=steps, seconds=round(sum(r["seconds"] for r in result.log), 3))
        history.append(row)
        if state.is_main_process:
            if score > best:
                recommender.save_pretrained(out)
            record_path.write_text(json.dumps(history, indent=2) + "\n")
            log(f"{unit} {end}: {label} {score:.4f}" + (" (best so far, saved)" if score > best else ""))
        state.wait_for_everyone()
    if result is None:  # every round was judged before this call: the run had finished (or stopped early)
        stopped = patience.stops([row[metric] for row in history])
        last = replace(sft, max_steps=history[-1][unit] * rounds.steps_per_unit) if stopped else sft
        result = sft_train(recommender.model, examples, last, out / "train", loss_hook=loss_hook, resume=True,
                           progress=progress, pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
    return result
