import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recalign.eval.protocols import full_ranking_ranks, sample_candidates, sampled_ranks


class FixedScores:
    """Scores item i as weights[i] for every user: rankings are easy to work out by hand."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=float)

    def score(self, histories):
        return np.tile(self.weights, (len(histories), 1))


@settings(max_examples=40, deadline=None)
@given(st.integers(25, 60), st.integers(1, 19), st.integers(0, 2**31 - 1), st.data())
def test_sampled_candidates_are_distinct_unseen_and_seeded(n_items, n_negatives, seed, data):
    n = 8
    histories = [np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=5))) for _ in range(n)]
    targets = np.array([data.draw(st.integers(0, n_items - 1)) for _ in range(n)])
    candidates = sample_candidates(histories, targets, n_items, n_negatives, seed)
    assert candidates.shape == (n, 1 + n_negatives)
    assert (candidates[:, 0] == targets).all()
    for row, history, target in zip(candidates, histories, targets):
        negatives = row[1:]
        assert len(set(negatives.tolist())) == n_negatives
        assert not set(negatives.tolist()) & (set(history.tolist()) | {int(target)})
        assert ((0 <= negatives) & (negatives < n_items)).all()
    assert (sample_candidates(histories, targets, n_items, n_negatives, seed) == candidates).all()


def test_sampling_refuses_when_too_few_unseen_items_remain():
    with pytest.raises(ValueError, match="negatives"):
        sample_candidates([np.array([0, 1, 2])], np.array([3]), n_items=5, n_negatives=2)


def test_full_ranking_with_and_without_history_exclusion():
    scorer = FixedScores([5, 4, 3, 2, 1])
    histories = [np.array([0, 1]), np.array([2]), np.array([3])]
    targets = np.array([2, 2, 4])
    plain = full_ranking_ranks(scorer, histories, targets, batch_size=2)
    assert plain.tolist() == [2, 2, 4]
    excluded = full_ranking_ranks(scorer, histories, targets, exclude_history=True, batch_size=2)
    # user 0: items 0 and 1 removed above the target; user 1: the target is its own history item, so a miss
    assert excluded.tolist() == [0, np.inf, 3]


def test_sampled_ranks_count_only_candidates_scoring_at_least_the_target():
    n_items = 50
    weights = np.arange(n_items, dtype=float)  # item i scores i
    histories = [np.array([0]), np.array([1])]
    targets = np.array([49, 10])
    ranks = sampled_ranks(FixedScores(weights), histories, targets, n_items, n_negatives=19, seed=3)
    candidates = sample_candidates(histories, targets, n_items, 19, seed=3)
    assert ranks[0] == 0
    assert ranks[1] == (candidates[1, 1:] > 10).sum()
