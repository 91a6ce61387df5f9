"""From raw interactions to examples: de-duplication, k-core filtering, id remapping, split protocols.

Shared by every loader whose source holds whole interaction logs (amazon-raw, movielens, csv, synth).
All of it is vectorised over flat numpy arrays, so a million interactions take seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from .dataset import Dataset, example_table, interaction_table, item_table
from .problems import Repairs

PROTOCOLS = ("loo", "temporal")


@dataclass
class SplitProtocol:
    """How examples are cut from chronological sequences.

    ``loo`` (leave-one-out): per user, the last interaction is the test target, the one before it the
    valid target, every earlier one a train target. ``temporal`` (global temporal split): every example
    is sorted by its target's timestamp and the last ``test_fraction`` / the ``valid_fraction`` before it
    become test / valid, as in the amazon18 and minionerec data. Each example's history is the user's
    previous ``max_history`` items (fewer at the start of a sequence; examples need at least one).
    """

    kind: str = "loo"
    max_history: int = 50
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    min_user_interactions: int = 5
    min_item_interactions: int = 5

    def __post_init__(self) -> None:
        if self.kind not in PROTOCOLS:
            raise ValueError(f"split protocol must be one of {PROTOCOLS}, got {self.kind!r}")
        if self.max_history < 1:
            raise ValueError("max_history must be at least 1")
        if not (0 <= self.valid_fraction < 1 and 0 < self.test_fraction < 1
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid and test fractions must lie in [0, 1) and sum to less than 1")


@dataclass
class Interactions:
    """Interaction log as flat arrays: ``user`` indexes ``user_names``, ``item`` indexes the item table rows."""

    user: np.ndarray
    user_names: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray

    def select(self, keep: np.ndarray) -> Interactions:
        return Interactions(self.user[keep], self.user_names, self.item[keep], self.timestamp[keep])


def deduplicate(log: Interactions, repairs: Repairs) -> Interactions:
    """Removes exact repeats of (user, item, timestamp); a repeated purchase at another time is kept."""
    order = np.lexsort((log.timestamp, log.item, log.user))  # stable: the first copy in file order comes first
    user, item, timestamp = log.user[order], log.item[order], log.timestamp[order]
    repeat = (user[1:] == user[:-1]) & (item[1:] == item[:-1]) & (timestamp[1:] == timestamp[:-1])
    keep = np.ones(len(order), dtype=bool)
    keep[order[1:][repeat]] = False
    if (~keep).any():
        rows = np.flatnonzero(~keep)[:5]
        repairs.add("duplicate_interaction", f"interactions {rows.tolist()} (0-based, after parsing)",
                    int((~keep).sum()))
    return log.select(keep)


def k_core(log: Interactions, n_items: int, min_user: int, min_item: int) -> tuple[Interactions, dict]:
    """Iterated k-core: removes users and items with too few interactions until none is left to remove."""
    before = len(log.user)
    rounds = 0
    while True:
        user_counts = np.bincount(log.user, minlength=len(log.user_names))
        item_counts = np.bincount(log.item, minlength=n_items)
        keep = (user_counts[log.user] >= min_user) & (item_counts[log.item] >= min_item)
        if keep.all():
            break
        log = log.select(keep)
        rounds += 1
    stats = {"min_user_interactions": min_user, "min_item_interactions": min_item, "rounds": rounds,
             "interactions_before": int(before), "interactions_after": int(len(log.user))}
    return log, stats


def flat_histories(starts: np.ndarray, positions: np.ndarray, max_history: int) -> tuple[np.ndarray, np.ndarray]:
    """For examples at ``positions`` of sequences beginning at ``starts`` (indices into one flat array),
    returns the offsets and the indices of their histories: the previous up-to-``max_history`` entries."""
    lengths = np.minimum(positions - starts, max_history)
    offsets = np.zeros(len(positions) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    return offsets, np.repeat(positions - lengths, lengths) + within


def build_dataset(log: Interactions, items: pd.DataFrame, protocol: SplitProtocol, repairs: Repairs,
                  source: dict) -> Dataset:
    """Filters, remaps and splits an interaction log into a :class:`Dataset`.

    Items that keep no interaction after filtering leave the catalogue; ids are then assigned in the
    item table's order (items) and in sorted raw-id order (users), so equal input gives equal ids.
    """
    log = deduplicate(log, repairs)
    log, filtering = k_core(log, len(items), protocol.min_user_interactions, protocol.min_item_interactions)
    if len(log.user) == 0:
        raise ValueError(f"no interaction survives the {protocol.min_user_interactions}/"
                         f"{protocol.min_item_interactions} k-core filter; lower --min-user / --min-item")
    kept_items = np.unique(log.item)
    item_ids = np.full(len(items), -1, dtype=np.int64)
    item_ids[kept_items] = np.arange(len(kept_items))
    kept_users = np.unique(log.user)
    names = np.asarray(log.user_names, dtype=object)[kept_users]
    name_order = np.argsort(names.astype(str), kind="stable")
    user_ids = np.full(len(log.user_names), -1, dtype=np.int64)
    user_ids[kept_users[name_order]] = np.arange(len(kept_users))
    user = user_ids[log.user]
    item = item_ids[log.item]
    timestamp = log.timestamp.astype(np.int64)

    order = np.lexsort((timestamp, user))  # a stable sort: source order breaks timestamp ties
    user, item, timestamp = user[order], item[order], timestamp[order]
    first = np.r_[True, user[1:] != user[:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
    positions = np.flatnonzero(~first)  # every interaction after a user's first is a target
    if len(positions) == 0:
        raise ValueError("no user has two interactions left after filtering, so there is no example to make")
    split = _assign_splits(user[positions], timestamp[positions], positions, protocol)
    user_names = names[name_order].astype(str)
    examples = {}
    for code, name in enumerate(("train", "valid", "test")):
        at = positions[split == code]
        offsets, history_index = flat_histories(starts[at], at, protocol.max_history)
        examples[name] = example_table(user[at], user_names[user[at]], offsets, item[history_index], item[at],
                                       timestamp[at])

    catalogue = items.iloc[kept_items].reset_index(drop=True)
    manifest = {"source": source, "protocol": asdict(protocol), "filtering": filtering, "repairs": repairs.to_dict()}
    return Dataset(item_table(catalogue), examples, manifest, interaction_table(user, item, timestamp))


def _assign_splits(user: np.ndarray, timestamp: np.ndarray, positions: np.ndarray,
                   protocol: SplitProtocol) -> np.ndarray:
    """0 / 1 / 2 (train / valid / test) for each example; examples arrive grouped by user, in time order."""
    n = len(user)
    split = np.zeros(n, dtype=np.int8)
    if protocol.kind == "loo":
        last = np.r_[user[1:] != user[:-1], True] if n else np.zeros(0, dtype=bool)
        split[last] = 2
        split[np.r_[last[1:] & (user[1:] == user[:-1]), False]] = 1
        return split
    order = np.lexsort((positions, user, timestamp))
    n_test = int(round(n * protocol.test_fraction))
    n_valid = int(round(n * protocol.valid_fraction))
    split[order[n - n_test - n_valid:n - n_test]] = 1
    split[order[n - n_test:]] = 2
    return split


def examples_from_lists(user_ids, users, histories, targets, timestamps) -> pa.Table:
    """Examples from Python lists of histories (the given-split formats, where rows come pre-cut)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    offsets = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter((i for h in histories for i in h), dtype=np.int64, count=int(offsets[-1]))
    return example_table(user_ids, users, offsets, values, targets, timestamps)


def user_ids(raw_users: list[str]) -> tuple[dict[str, int], np.ndarray]:
    """Contiguous ids for raw user ids, in numeric order when every id is an integer, else sorted as text."""
    names = sorted(set(raw_users))
    if all(name.lstrip("-").isdigit() for name in names):
        names.sort(key=int)
    return {name: i for i, name in enumerate(names)}, np.asarray(names, dtype=object)


@dataclass
class UserSequences:
    """Each user's examples of a split chained back into item sequences (oldest first)."""

    users: list[int]  # user id of each sequence
    sequences: list[list[int]]
    rows: int  # examples read
    extended: int  # rows that continued a sequence of their user (their history overlapped its end)
    covered: int  # repeated rows (same user, history, target and timestamp as an earlier one), adding nothing

    @property
    def targets(self) -> int:
        """Items after each sequence's first: what a next-item objective can train."""
        return sum(len(s) - 1 for s in self.sequences)


def chain_examples(users: np.ndarray, histories: list[list[int]], targets: np.ndarray,
                   timestamps: np.ndarray) -> UserSequences:
    """Chains a split's examples into sequences, per user in (timestamp, file) order: a row whose history's start
    overlaps the end of the user's current sequence (by at least two items, or the whole of a shorter history)
    extends it with the rest of its history and its target; a repeat of an earlier row (same user, history, target
    and timestamp) is covered; any other row starts a new sequence, its history plus target. A sequence holds
    only items of the split's rows (their histories and targets), in their order: no other split's target
    enters."""
    order = np.lexsort((np.asarray(timestamps), np.asarray(users)))  # stable: ties keep file order
    out = UserSequences([], [], len(order), 0, 0)
    current_user, seen = None, set()
    for row in order.tolist():
        user, history, target = int(users[row]), list(histories[row]), int(targets[row])
        key = (user, tuple(history), target, int(timestamps[row]))
        if key in seen:
            out.covered += 1
            continue
        seen.add(key)
        window = history + [target]
        sequence = out.sequences[-1] if out.sequences and user == current_user else None
        overlap = _overlap(sequence, history) if sequence is not None else 0
        if overlap:
            sequence += window[overlap:]
            out.extended += 1
        else:
            out.users.append(user)
            out.sequences.append(window)
            current_user = user
    return out


def _overlap(sequence: list[int], history: list[int]) -> int:
    """The longest m with history[:m] == sequence[-m:], if it is at least min(2, len(history)); else 0."""
    for m in range(min(len(sequence), len(history)), 0, -1):
        if history[:m] == sequence[-m:]:
            return m if m >= min(2, len(history)) else 0
    return 0
