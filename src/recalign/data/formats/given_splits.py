"""Shared reading of sources that ship examples already cut into splits (amazon18, minionerec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import NO_TIMESTAMP
from ..problems import DataError, Repairs
from ..sequences import examples_from_lists, user_ids
from ..textio import parse_int, parse_list, unix_seconds


@dataclass
class SplitColumns:
    user: str
    history: str
    target: str
    timestamp: str | None


def read_examples(path: Path, frame: pd.DataFrame, columns: SplitColumns, raw_to_item: dict[int, int],
                  unknown_items: str, repairs: Repairs) -> tuple[list, list, list, list]:
    """Raw users, item-id histories, targets and timestamps of one split file, with ids resolved and checked."""
    users, histories, targets, timestamps, kept_rows = [], [], [], [], []
    stamps = frame[columns.timestamp] if columns.timestamp else [None] * len(frame)
    rows = zip(frame[columns.user], frame[columns.history], frame[columns.target], stamps)
    for row, (user, history_text, target_text, stamp) in enumerate(rows, start=1):
        target_raw = parse_int(target_text, path, row, columns.target)
        if target_raw not in raw_to_item:
            if unknown_items == "error":
                raise DataError(path, f"target item {target_raw} is not in the item table", row, columns.target)
            repairs.add("unknown_item", f"{path.name} row {row}")
            continue
        history = []
        for raw in parse_list(history_text, path, row, columns.history):
            raw = parse_int(str(raw), path, row, columns.history)
            if raw in raw_to_item:
                history.append(raw_to_item[raw])
            elif unknown_items == "error":
                raise DataError(path, f"history item {raw} is not in the item table "
                                "(--unknown-items drop removes such ids, counted)", row, columns.history)
            else:
                repairs.add("unknown_item", f"{path.name} row {row}")
        if not history:
            repairs.add("empty_history", f"{path.name} row {row}")
            continue
        users.append(user)
        histories.append(history)
        targets.append(raw_to_item[target_raw])
        timestamps.append(np.nan if stamp is None else float(parse_int(stamp, path, row, columns.timestamp)))
        kept_rows.append(row)
    if columns.timestamp is None:
        return users, histories, targets, [NO_TIMESTAMP] * len(users)
    return users, histories, targets, unix_seconds(timestamps, kept_rows, path, columns.timestamp, repairs).tolist()


def split_tables(per_split: dict[str, tuple[list, list, list, list]]):
    """Example tables for each split, with user ids shared across splits."""
    index, _ = user_ids([u for users, *_ in per_split.values() for u in users])
    return {name: examples_from_lists(np.array([index[u] for u in users], dtype=np.int64), users, histories,
                                      targets, timestamps)
            for name, (users, histories, targets, timestamps) in per_split.items()}
