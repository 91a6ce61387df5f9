import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recalign.eval.metrics import (
    NonFiniteScores,
    confidence_95,
    coverage,
    invalid_rate,
    paired_difference,
    ranking_metrics,
    ranks_from_lists,
    ranks_from_scores,
)
from recalign.eval.protocols import full_ranking_ranks, sampled_ranks


def test_metrics_match_hand_computed_values():
    # targets ranked 0th, 2nd, 5th and not at all
    ranks = np.array([0, 2, 5, np.inf])
    m = ranking_metrics(ranks, ks=(1, 3, 10))
    assert m["HR@1"] == pytest.approx(1 / 4)
    assert m["HR@3"] == pytest.approx(2 / 4)
    assert m["HR@10"] == pytest.approx(3 / 4)
    assert m["NDCG@1"] == pytest.approx(1 / 4)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(7)) / 4)
    assert m["MRR@3"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 6) / 4)


def test_ranks_from_scores_breaks_ties_pessimistically_and_respects_masking():
    scores = np.array([[0.1, 0.5, 0.5, 0.2], [1.0, 1.0, 1.0, 1.0], [0.3, -np.inf, 0.1, 0.0]])
    assert ranks_from_scores(scores, np.array([1, 0, 1])).tolist() == [1, 3, np.inf]


def test_ranks_from_lists_finds_first_hit_and_ignores_invalid_slots():
    ranked = np.array([[3, 1, 2], [-1, -1, 7], [4, 5, 6]])
    assert ranks_from_lists(ranked, np.array([1, 7, 9])).tolist() == [1, 2, np.inf]


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(2, 9)),
              elements=st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 0.5, 1.0, 2.0])), st.data())
def test_ranks_from_scores_equals_a_sort_that_puts_the_target_after_its_ties(scores, data):
    targets = np.array([data.draw(st.integers(0, scores.shape[1] - 1)) for _ in range(scores.shape[0])])
    ranks = ranks_from_scores(scores, targets)
    for row, target, rank in zip(scores, targets, ranks):
        if np.isneginf(row[target]):
            assert rank == np.inf
            continue
        order = sorted(range(len(row)), key=lambda i: (-row[i], i == target))  # ties first, then the target
        assert rank == order.index(target)


def test_invalid_rate_and_coverage():
    ranked = np.array([[0, 1, -1], [1, 2, 3], [-1, -1, -1]])
    assert invalid_rate(ranked) == pytest.approx(4 / 9)
    assert coverage(ranked, n_items=10, k=2) == pytest.approx(3 / 10)  # {0, 1, 2}
    assert coverage(ranked, n_items=10, k=3) == pytest.approx(4 / 10)


def test_confidence_interval_is_the_binomial_normal_approximation():
    ranks = np.array([0] * 30 + [np.inf] * 70, dtype=float)
    half = confidence_95(ranks, ks=(10,))["HR@10"]
    p = 0.3
    assert half == pytest.approx(1.959964 * math.sqrt(p * (1 - p) * 100 / 99) / 10, rel=1e-5)


def test_empty_evaluation_is_refused():
    with pytest.raises(ValueError):
        ranking_metrics(np.array([]))


def test_a_nan_score_is_refused_naming_its_rows_rather_than_ranked():
    # before the fix: a NaN target ranked -1 (a hit with NDCG = inf); a NaN elsewhere never outranked the target
    scores = np.array([[0.1, 0.5, 0.2], [np.nan, 0.5, 0.2], [0.3, 0.1, np.nan], [0.9, np.inf, 0.0]])
    with pytest.raises(NonFiniteScores, match=r"3 row\(s\) \(1, 2, 3\)") as caught:
        ranks_from_scores(scores, np.array([1, 0, 0, 0]))
    assert caught.value.rows.tolist() == [1, 2, 3]
    assert ranks_from_scores(scores[:1], np.array([1])).tolist() == [0]


class NanForMarkedUsers:
    """Scores 0..3; a NaN on item 1 for users whose history starts with 9."""

    def score(self, histories):
        scores = np.tile(np.arange(4, dtype=float), (len(histories), 1))
        scores[[h[0] == 9 for h in histories], 1] = np.nan
        return scores


def test_protocols_name_the_scorer_and_the_splits_rows():
    histories = [np.array([0]), np.array([0]), np.array([0]), np.array([0]), np.array([9]), np.array([0])]
    targets = np.array([1, 2, 1, 1, 1, 1])
    with pytest.raises(NonFiniteScores, match=r"NanForMarkedUsers gave NaN or \+inf scores in 1 row\(s\) \(4\)"):
        full_ranking_ranks(NanForMarkedUsers(), histories, targets, batch_size=3)  # row 4 is in the second batch
    with pytest.raises(NonFiniteScores, match="NanForMarkedUsers"):
        sampled_ranks(NanForMarkedUsers(), histories, targets, n_items=4, n_negatives=2)
    assert full_ranking_ranks(NanForMarkedUsers(), histories[:4], targets[:4]).tolist() == [2, 1, 2, 2]


def test_paired_difference_against_hand_computed_values():
    a = np.array([0.0, 1.0, np.inf, 0.0])  # NDCG@10 per row: 1, 1/log2(3), 0, 1
    b = np.array([0.0, np.inf, 0.0, 3.0])  # 1, 0, 1, 1/log2(5)
    diff = np.array([0.0, 1 / math.log2(3), -1.0, 1 - 1 / math.log2(5)])
    mean, half = paired_difference(a, b, "NDCG@10")
    assert mean == pytest.approx(diff.mean())
    assert half == pytest.approx(1.959963984540054 * diff.std(ddof=1) / 2)
    assert paired_difference(a, a, "HR@1") == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired rows differ"):
        paired_difference(a, b[:3], "HR@1")
