"""Evaluation: ranking metrics, the full-catalogue and sampled-candidate protocols, baselines."""

from .evaluate import Evaluation, Protocol, evaluate, evaluate_baselines
from .metrics import (
    DEFAULT_KS,
    NonFiniteScores,
    coverage,
    invalid_rate,
    ranking_metrics,
    ranks_from_lists,
    ranks_from_scores,
)

__all__ = ["DEFAULT_KS", "Evaluation", "Protocol", "coverage", "evaluate", "evaluate_baselines", "invalid_rate",
           "NonFiniteScores", "ranking_metrics", "ranks_from_lists", "ranks_from_scores"]
