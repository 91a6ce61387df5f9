"""Chaining a split's examples back into user sequences: the sequence objective's training data."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recalign.data.formats.minionerec import history_rows
from recalign.data.sequences import chain_examples


def chain(rows: list[tuple[int, list[int], int]], stamps: list[int] | None = None):
    users = np.array([r[0] for r in rows])
    return chain_examples(users, [r[1] for r in rows], np.array([r[2] for r in rows]),
                          np.array(stamps if stamps is not None else [-1] * len(rows)))


@settings(max_examples=60, deadline=None)
@given(logs=st.lists(st.lists(st.integers(0, 6), min_size=2, max_size=30), min_size=1, max_size=5),
       max_history=st.integers(1, 12), seed=st.integers(0, 1000))
def test_every_example_of_a_log_chains_back_into_the_log(logs, max_history, seed):
    """Rows cut from whole logs (each interaction after the first, its last max_history items as history), in any
    file order but chronological per user, give back each user's log: every item after the first once."""
    rows, stamps = [], []
    for user, log in enumerate(logs):
        for position in range(1, len(log)):
            rows.append((user, log[max(0, position - max_history):position], log[position]))
            stamps.append(position)
    order = np.random.default_rng(seed).permutation(len(rows))
    chained = chain([rows[i] for i in order], [stamps[i] for i in order])
    assert chained.sequences == logs and chained.users == list(range(len(logs)))
    assert chained.targets == sum(len(log) - 1 for log in logs) == len(rows)
    assert chained.extended == len(rows) - len(logs) and chained.covered == 0


def test_overlapping_windows_merge_and_repeats_are_covered():
    rows = [(0, [1, 2, 3, 4], 5),  # t=1
            (0, [3, 4, 5, 6], 7),  # t=2: overlaps the end by 3 items, adds 6 and 7
            (0, [3, 4, 5, 6], 7),  # the same row again: covered
            (0, [9, 8], 1),  # no overlap: a new sequence
            (1, [1, 2], 3)]  # another user
    chained = chain(rows, [1, 2, 2, 3, 1])
    assert chained.sequences == [[1, 2, 3, 4, 5, 6, 7], [9, 8, 1], [1, 2, 3]]
    assert chained.users == [0, 0, 1]
    assert (chained.rows, chained.extended, chained.covered) == (5, 1, 1)


def test_a_one_item_overlap_of_a_longer_history_is_not_a_continuation():
    chained = chain([(0, [1, 2], 3), (0, [3, 9], 4)], [1, 2])  # 3 ends one and starts the other: not enough
    assert chained.sequences == [[1, 2, 3], [3, 9, 4]]


def test_minionerec_history_rows_never_hold_a_valid_target():
    # user a's second valid row holds its first valid target (8) in its history: only the first row is read
    users, histories, targets = ["a", "b", "a"], [[4, 5, 6], [7], [4, 5, 6, 8]], [8, 9, 10]
    rows = history_rows(users, histories, targets, [-1, -1, -1])
    assert list(zip(rows[0], rows[1], rows[2])) == [("a", [4], 5), ("a", [4, 5], 6)]
    assert not set(rows[2]) & set(targets) and not {i for h in rows[1] for i in h} & set(targets)
    chained = chain([(0, h, t) for h, t in zip(rows[1], rows[2])])
    assert chained.sequences == [[4, 5, 6]]
