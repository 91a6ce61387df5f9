import numpy as np
import pandas as pd
import pytest

from recalign.data.dataset import Dataset, item_table
from recalign.data.sequences import examples_from_lists
from recalign.eval import Protocol, evaluate, evaluate_baselines
from recalign.eval.baselines import Markov, Popularity, make_baseline
from recalign.eval.protocols import sample_candidates


def tiny_dataset(train, test, n_items=6):
    def table(rows):
        return examples_from_lists(np.zeros(len(rows), dtype=int), ["u"] * len(rows), [h for h, _ in rows],
                                   [t for _, t in rows], [0] * len(rows))

    items = pd.DataFrame({"raw_id": [str(i) for i in range(n_items)], "title": [f"t{i}" for i in range(n_items)]})
    return Dataset(item_table(items), {"train": table(train), "valid": table([]), "test": table(test)})


def test_popularity_counts_training_targets():
    dataset = tiny_dataset([([0], 1), ([2], 1), ([3], 4)], [([0], 1)])
    assert Popularity(dataset).score([np.array([5])])[0].tolist() == [0, 2, 0, 0, 1, 0]


def test_markov_scores_transitions_from_the_last_item_with_popularity_breaking_ties():
    dataset = tiny_dataset([([5, 0], 1), ([0], 1), ([0], 2), ([3], 4), ([3], 4), ([2], 1)], [([0], 2)])
    scores = Markov(dataset).score([np.array([5, 0]), np.array([3]), np.array([1])])
    assert scores[0].argmax() == 1 and scores[0, 1] > scores[0, 2] > scores[0, 4] > scores[0, 0]
    assert scores[1].argmax() == 4
    # item 1 was never a "last item": popularity alone orders the row, below one transition count
    assert scores[2].argsort()[::-1][:3].tolist() == [1, 4, 2] and scores[2].max() < 1


def test_markov_matches_a_slow_count_on_random_data():
    rng = np.random.default_rng(0)
    n_items = 30
    train = [(rng.integers(0, n_items, rng.integers(1, 5)).tolist(), int(rng.integers(0, n_items)))
             for _ in range(300)]
    dataset = tiny_dataset(train, [([0], 1)], n_items)
    histories = [rng.integers(0, n_items, 3) for _ in range(20)]
    scores = Markov(dataset).score(histories)
    for history, row in zip(histories, scores):
        counts = np.zeros(n_items)
        for h, t in train:
            if h[-1] == history[-1]:
                counts[t] += 1
        assert np.array_equal(np.floor(row), counts)


def test_evaluate_baselines_on_a_case_worked_by_hand():
    dataset = tiny_dataset([([0], 1), ([0], 1), ([2], 3)], [([0], 1), ([2], 3), ([4], 5)])
    results = evaluate_baselines(dataset, names=("popularity", "markov"), ks=(1, 2))
    # popularity ranks item 1 first, item 3 second, the rest tie (pessimistic: rank 5 for item 5)
    assert results["popularity"]["HR@1"] == 1 / 3 and results["popularity"]["HR@2"] == 2 / 3
    # markov: 0 -> 1 and 2 -> 3 are known transitions; item 4 has none
    assert results["markov"]["HR@1"] == 2 / 3
    sampled = evaluate(make_baseline("popularity", dataset), dataset, "test", (1,),
                       Protocol("sampled", n_negatives=2, seed=1)).metrics
    # row 1: item 1 outscores every other item; row 2: item 3 loses only to item 1, if item 1 was drawn;
    # row 3: item 5 ties its zero-count negatives and ties count against it
    candidates = sample_candidates([np.array([0]), np.array([2]), np.array([4])], np.array([1, 3, 5]), 6, 2, seed=1)
    assert sampled["HR@1"] == (1 + (1 not in candidates[1, 1:])) / 3


def test_unknown_baseline_is_refused():
    with pytest.raises(ValueError, match="popularity"):
        make_baseline("oracle", tiny_dataset([([0], 1)], [([0], 1)]))
