"""Ranking metrics from the rank of each example's target.

Everything reduces to one number per example: the 0-based rank of the target in the model's ordering,
``inf`` when the target is not ranked at all (not generated, or excluded). Ties between scores are broken
pessimistically (an item scoring the same as the target counts as ranked above it), so a model that
scores everything equal earns nothing.

A NaN score is a failure of the model, never a rank: ``ranks_from_scores`` refuses it with a
``NonFiniteScores`` error naming the rows (a NaN compares false with everything, so it would otherwise give
its target rank -1, a hit with NDCG = inf, or never rank above the target). ``+inf`` is refused the same way;
``-inf`` stays the documented "not ranked" marker.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)
NOT_RANKED = np.inf
Z_95 = 1.959963984540054


class NonFiniteScores(ValueError):
    """Scores holding NaN or +inf; ``rows`` are the offending row numbers of the scored batch."""

    def __init__(self, rows: np.ndarray, what: str = "the scorer"):
        self.rows = np.asarray(rows)
        shown = ", ".join(str(r) for r in self.rows[:10]) + (" ..." if len(self.rows) > 10 else "")
        super().__init__(f"{what} gave NaN or +inf scores in {len(self.rows)} row(s) ({shown}); "
                         "a diverged model cannot be ranked")


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 0-based rank of ``targets[i]`` in row i of ``scores``; ``inf`` where its score is -inf.

    Raises ``NonFiniteScores`` when any score is NaN or +inf.
    """
    bad = np.isnan(scores) | np.isposinf(scores)
    if bad.any():
        raise NonFiniteScores(np.flatnonzero(bad.any(axis=1)))
    target_scores = np.take_along_axis(scores, targets[:, None], axis=1)
    ranks = (scores >= target_scores).sum(axis=1).astype(np.float64) - 1
    ranks[np.isneginf(target_scores[:, 0])] = NOT_RANKED
    return ranks


def ranks_from_lists(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Rank of each target in a (n, K) matrix of ranked item ids (-1 marks an empty or invalid slot)."""
    hits = ranked == targets[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), NOT_RANKED).astype(np.float64)


def per_example(ranks: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-example HR@k, NDCG@k and MRR@k (one relevant item: IDCG = 1)."""
    inside = ranks < k
    safe = np.where(inside, ranks, 0)
    return {
        f"HR@{k}": inside.astype(np.float64),
        f"NDCG@{k}": np.where(inside, 1.0 / np.log2(safe + 2), 0.0),
        f"MRR@{k}": np.where(inside, 1.0 / (safe + 1), 0.0),
    }


def ranking_metrics(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k, averaged over examples, for each k."""
    if len(ranks) == 0:
        raise ValueError("no examples to evaluate")
    return {name: float(values.mean()) for k in ks for name, values in per_example(ranks, k).items()}


def confidence_95(ranks: np.ndarray, ks=DEFAULT_KS) -> dict[str, float]:
    """Half-width of the normal-approximation 95% interval of each metric (standard error x 1.96)."""
    return {name: half_width_95(values) for k in ks for name, values in per_example(ranks, k).items()}


def half_width_95(values: np.ndarray) -> float:
    """Half-width of the normal-approximation 95% interval of the mean of ``values`` (nan for fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    return float(Z_95 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def paired_difference(ranks_a: np.ndarray, ranks_b: np.ndarray, metric: str) -> tuple[float, float]:
    """Mean per-row difference a - b of ``metric`` (e.g. ``NDCG@10``) on the same rows, and its 95% half-width:
    the interval of a difference between two models, far narrower than either model's own when rows agree."""
    if len(ranks_a) != len(ranks_b):
        raise ValueError(f"paired rows differ in number: {len(ranks_a)} and {len(ranks_b)}")
    k = int(metric.split("@")[1])
    diff = per_example(np.asarray(ranks_a), k)[metric] - per_example(np.asarray(ranks_b), k)[metric]
    return float(diff.mean()), half_width_95(diff)


def write_ranks(path, ranks: np.ndarray, targets: np.ndarray) -> None:
    """Per-row target ranks (0-based, inf = not ranked) as parquet, for paired comparisons between models."""
    import pandas as pd

    pd.DataFrame({"row": np.arange(len(ranks)), "target": np.asarray(targets, dtype=np.int64),
                  "rank": np.asarray(ranks, dtype=np.float64)}).to_parquet(path, index=False)


def read_ranks(path) -> np.ndarray:
    import pandas as pd

    return pd.read_parquet(path, columns=["rank"])["rank"].to_numpy()


def invalid_rate(ranked: np.ndarray) -> float:
    """Share of output slots that hold no catalogue item (-1): what unconstrained generation gets wrong."""
    return float((ranked < 0).mean())


def coverage(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    top = ranked[:, :k]
    return float(len(np.unique(top[top >= 0])) / n_items)
