import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recalign.data.problems import Repairs
from recalign.data.sequences import Interactions, SplitProtocol, build_dataset, flat_histories, k_core


def slow_k_core(pairs, min_user, min_item):
    pairs = list(pairs)
    while True:
        users = pd.Series([u for u, _ in pairs]).value_counts()
        items = pd.Series([i for _, i in pairs]).value_counts()
        kept = [(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 9)), max_size=80), st.integers(1, 4), st.integers(1, 4))
def test_k_core_equals_the_obvious_iteration(pairs, min_user, min_item):
    user = np.array([u for u, _ in pairs], dtype=np.int64)
    item = np.array([i for _, i in pairs], dtype=np.int64)
    log = Interactions(user, np.array([f"u{i}" for i in range(8)], dtype=object), item, np.zeros(len(pairs), int))
    kept, stats = k_core(log, 10, min_user, min_item)
    assert list(zip(kept.user.tolist(), kept.item.tolist())) == slow_k_core(pairs, min_user, min_item)
    assert stats["interactions_after"] == len(kept.user)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6), st.integers(1, 4))
def test_flat_histories_are_the_previous_items(lengths, max_history):
    starts = np.repeat(np.cumsum([0] + lengths[:-1]), lengths)
    positions = np.arange(sum(lengths))
    offsets, index = flat_histories(starts, positions, max_history)
    for k, (start, position) in enumerate(zip(starts, positions)):
        expected = list(range(max(start, position - max_history), position))
        assert index[offsets[k]:offsets[k + 1]].tolist() == expected


def log_from(rows):
    """rows: (user name, item row, timestamp)."""
    names = sorted({u for u, _, _ in rows})
    return Interactions(np.array([names.index(u) for u, _, _ in rows]), np.array(names, dtype=object),
                        np.array([i for _, i, _ in rows]), np.array([t for _, _, t in rows]))


ITEMS = pd.DataFrame({"raw_id": list("abcdef"), "title": [f"title {c}" for c in "abcdef"]})


def as_rows(dataset, split):
    frame = dataset.split(split)
    return [(u, h.tolist(), t, ts) for u, h, t, ts in zip(frame.user, frame.history, frame.target, frame.timestamp)]


def test_leave_one_out_by_hand():
    # user x bought a, b, c, d (out of order in the file); user y bought e, a, f; item rows = letters' order
    rows = [("x", 2, 30), ("x", 0, 10), ("x", 1, 20), ("x", 3, 40), ("y", 4, 5), ("y", 0, 6), ("y", 5, 7)]
    protocol = SplitProtocol("loo", max_history=2, min_user_interactions=1, min_item_interactions=1)
    dataset = build_dataset(log_from(rows), ITEMS, protocol, Repairs(), {})
    assert as_rows(dataset, "train") == [("x", [0], 1, 20)]
    assert as_rows(dataset, "valid") == [("x", [0, 1], 2, 30), ("y", [4], 0, 6)]
    assert as_rows(dataset, "test") == [("x", [1, 2], 3, 40), ("y", [4, 0], 5, 7)]
    assert dataset.interactions.num_rows == 7


def test_temporal_split_by_hand():
    rows = [("x", 0, 1), ("x", 1, 2), ("x", 2, 9), ("y", 3, 3), ("y", 4, 4), ("y", 5, 8), ("y", 0, 10)]
    protocol = SplitProtocol("temporal", valid_fraction=0.2, test_fraction=0.2, min_user_interactions=1,
                             min_item_interactions=1)
    dataset = build_dataset(log_from(rows), ITEMS, protocol, Repairs(), {})
    # examples by target time: x@2, y@4, y@8, x@9, y@10 -> 3 train, 1 valid, 1 test
    assert [r[3] for r in as_rows(dataset, "train")] == [2, 4, 8]
    assert as_rows(dataset, "valid") == [("x", [0, 1], 2, 9)]
    assert as_rows(dataset, "test") == [("y", [3, 4, 5], 0, 10)]


def test_filtering_renumbers_items_and_users_and_counts_duplicates():
    rows = [("x", 1, 1), ("x", 1, 1), ("x", 3, 2), ("x", 1, 3), ("y", 3, 1), ("y", 1, 2), ("z", 5, 1)]
    repairs = Repairs()
    protocol = SplitProtocol("loo", min_user_interactions=2, min_item_interactions=2)
    dataset = build_dataset(log_from(rows), ITEMS, protocol, repairs, {})
    assert repairs.count("duplicate_interaction") == 1
    assert dataset.items.column("raw_id").to_pylist() == ["b", "d"]  # items a, c, e, f have no interaction left
    assert dataset.counts()["users"] == 2 and dataset.manifest["filtering"]["interactions_after"] == 5


def test_empty_result_and_bad_protocols_are_refused():
    with pytest.raises(ValueError, match="k-core"):
        build_dataset(log_from([("x", 0, 1)]), ITEMS, SplitProtocol(), Repairs(), {})
    loose = SplitProtocol(min_user_interactions=1, min_item_interactions=1)
    with pytest.raises(ValueError, match="no example"):
        build_dataset(log_from([("x", 0, 1), ("y", 1, 1)]), ITEMS, loose, Repairs(), {})
    with pytest.raises(ValueError):
        SplitProtocol("random")
    with pytest.raises(ValueError):
        SplitProtocol("temporal", valid_fraction=0.6, test_fraction=0.5)
