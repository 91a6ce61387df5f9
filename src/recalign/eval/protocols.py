"""Evaluation protocols: full-catalogue ranking and the sampled-candidate protocol.

A scorer is anything with ``score(histories) -> (batch, n_items)`` over the whole catalogue (the
baselines here, the CF models later). Both protocols call it in batches and never loop over items.

Declared conventions:
- ``exclude_history``: items of the user's history get score -inf. A target that is itself in the history
  is then not ranked (a miss), rather than kept rankable, which would leak that it was a history item.
- Sampled candidates: 1 positive + n negatives drawn uniformly without replacement from the items that are
  neither the target nor in the history, seeded per protocol run; the target sits in column 0 and ties
  are pessimistic, so column order gives it no advantage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .metrics import NonFiniteScores, ranks_from_scores


class Scorer(Protocol):
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray: ...


def split_histories(offsets: np.ndarray, values: np.ndarray) -> list[np.ndarray]:
    return np.split(values, offsets[1:-1]) if len(offsets) > 1 else []


def mask_histories(scores: np.ndarray, histories: Sequence[np.ndarray]) -> None:
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    scores[rows, np.concatenate(histories) if len(histories) else []] = -np.inf


def batch_ranks(scores: np.ndarray, targets: np.ndarray, start: int, scorer: Scorer) -> np.ndarray:
    """``ranks_from_scores`` on rows ``start:``, a NaN score reported with the scorer and the split's row numbers."""
    try:
        return ranks_from_scores(scores, targets)
    except NonFiniteScores as exc:
        raise NonFiniteScores(exc.rows + start, type(scorer).__name__) from None


def full_ranking_ranks(scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray,
                       exclude_history: bool = False, batch_size: int = 1024) -> np.ndarray:
    """Rank of every target among all catalogue items."""
    ranks = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), batch_size):
        batch = histories[start:start + batch_size]
        scores = np.asarray(scorer.score(batch))
        if exclude_history:
            scores = scores.copy()  # scorers may hand out shared or read-only arrays
            mask_histories(scores, batch)
        ranks[start:start + batch_size] = batch_ranks(scores, targets[start:start + batch_size], start, scorer)
    return ranks


def sample_candidates(histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int, n_negatives: int = 19,
                      seed: int = 0) -> np.ndarray:
    """(n, 1 + n_negatives) candidate ids, the target in column 0, negatives distinct and unseen by the user."""
    n = len(targets)
    longest = max((len(h) for h in histories), default=0)
    seen = np.full((n, longest + 1), -1, dtype=np.int64)
    for i, history in enumerate(histories):
        seen[i, :len(history)] = history
    seen[:, -1] = targets
    n_seen = np.array([len(np.unique(row[row >= 0])) for row in seen])
    if (n_items - n_seen < n_negatives).any():
        raise ValueError(f"a user has seen too much of the {n_items}-item catalogue to draw {n_negatives} negatives")
    rng = np.random.default_rng(seed)
    negatives = rng.integers(0, n_items, size=(n, n_negatives))
    while True:
        bad = (negatives[:, :, None] == seen[:, None, :]).any(axis=2)
        for j in range(1, n_negatives):  # a value repeated within a row: redraw every copy after the first
            bad[:, j] |= (negatives[:, :j] == negatives[:, j:j + 1]).any(axis=1)
        if not bad.any():
            return np.concatenate([targets[:, None], negatives], axis=1)
        negatives[bad] = rng.integers(0, n_items, size=int(bad.sum()))


def sampled_ranks(scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int,
                  n_negatives: int = 19, seed: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Rank of every target among its 1 + n_negatives candidates (scores read from the full-catalogue scores)."""
    candidates = sample_candidates(histories, targets, n_items, n_negatives, seed)
    ranks = np.empty(len(targets), dtype=np.float64)
    for start in range(0, len(targets), batch_size):
        scores = np.asarray(scorer.score(histories[start:start + batch_size]))
        chosen = np.take_along_axis(scores, candidates[start:start + batch_size], axis=1)
        ranks[start:start + batch_size] = batch_ranks(chosen, np.zeros(len(chosen), dtype=np.int64), start, scorer)
    return ranks
