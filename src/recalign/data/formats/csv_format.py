"""``csv``: a plain interactions CSV (user, item, timestamp) plus an items CSV (item, title, ...).

The documented path for custom datasets. Column names come from ``--user-col`` etc.; the optional item
columns (description, brand, category) are used when present. Timestamps may be Unix seconds (a column of
milliseconds is detected and counted) or ISO 8601 dates; an empty timestamp becomes -1 (counted); other date
formats, whose day/month order would be a guess, and times past the year 5000 are errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import NO_TIMESTAMP, Dataset
from ..problems import DataError, Repairs
from ..sequences import Interactions, build_dataset
from ..textio import MAX_TITLE_CHARS, check_title_length, read_csv, unix_seconds
from . import PrepareOptions, describe_files


def item_frame(frame: pd.DataFrame, path: Path, id_col: str, columns: dict[str, str], repairs: Repairs) -> pd.DataFrame:
    """Item rows with canonical column names; duplicate raw ids are refused, empty titles repaired."""
    duplicated = frame[id_col].duplicated(keep=False)
    if duplicated.any():
        rows = (np.flatnonzero(duplicated.to_numpy()) + 1).tolist()
        raise DataError(path, f"item id {frame[id_col][duplicated].iloc[0]!r} appears more than once "
                        f"(rows {rows[:5]})", row=rows[0], field=id_col)
    items = pd.DataFrame({"raw_id": frame[id_col].to_numpy(dtype=object)})
    for canonical, column in columns.items():
        if column in frame.columns:
            items[canonical] = frame[column].to_numpy(dtype=object)
    titles = items["title"].astype(str)  # kept exactly as written: identifiers are built from these bytes
    too_long = np.flatnonzero((titles.str.len() > MAX_TITLE_CHARS).to_numpy())
    if len(too_long):
        check_title_length(titles.iloc[too_long[0]], path, int(too_long[0]) + 1, columns["title"])
    empty = (titles.str.strip() == "").to_numpy()
    if empty.any():
        repairs.add("empty_title", f"{path.name} row {int(np.flatnonzero(empty)[0]) + 1}", int(empty.sum()))
        titles[empty] = "item " + items["raw_id"][empty].astype(str)
    items["title"] = titles.to_numpy(dtype=object)
    for column in ("description", "brand", "category"):
        if column in items.columns:
            items[column] = items[column].where(items[column].astype(str).str.strip() != "", None)
    return items


def parse_timestamps(values: pd.Series, path: Path, field: str, repairs: Repairs) -> np.ndarray:
    """Unix seconds (checked by ``unix_seconds``: milliseconds detected, nothing past int64) or ISO 8601 dates;
    other date formats are refused, since their day/month order would be a guess."""
    empty = (values.str.strip() == "").to_numpy()
    numeric = pd.to_numeric(values.where(~empty, "0"), errors="coerce").astype(np.float64)
    bad = numeric.isna().to_numpy()
    result = np.full(len(values), NO_TIMESTAMP, dtype=np.int64)
    if bad.any():
        dates = pd.to_datetime(values[bad], errors="coerce", utc=True, format="ISO8601")
        if dates.isna().any():
            row = int(np.flatnonzero(bad)[np.flatnonzero(dates.isna().to_numpy())[0]]) + 1
            raise DataError(path, f"timestamp {values.iloc[row - 1]!r} is neither Unix seconds nor an ISO 8601 "
                            "date (YYYY-MM-DD, optionally Thh:mm:ss); other date formats are refused, their "
                            "day/month order being a guess", row=row, field=field)
        result[bad] = (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    numbers = ~bad & ~empty
    if numbers.any():
        seconds = np.where(numbers, numeric.to_numpy(), np.nan)
        result[numbers] = unix_seconds(seconds, np.arange(1, len(values) + 1), path, field, repairs)[numbers]
    if empty.any():
        repairs.add("missing_timestamp", f"{path.name} row {int(np.flatnonzero(empty)[0]) + 1}", int(empty.sum()))
    return result


def resolve_items(raw_items: pd.Series, index: pd.Index, path: Path, field: str, policy: str,
                  repairs: Repairs, line_numbers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row positions in the item table for each raw item id, and which interactions to keep.

    ``line_numbers`` gives each value's row in the file when it is not simply its position + 1."""
    rows = index.get_indexer(raw_items)
    unknown = rows < 0
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        row = int(line_numbers[first]) if line_numbers is not None else first + 1
        if policy == "error":
            raise DataError(path, f"item {raw_items.iloc[first]!r} is not in the item table "
                            f"({int(unknown.sum())} such rows; --unknown-items drop removes them, counted)",
                            row=row, field=field)
        repairs.add("unknown_item", f"{path.name} row {row}", int(unknown.sum()))
    return rows, ~unknown


def prepare(source: Path, options: PrepareOptions, repairs: Repairs) -> Dataset:
    cols = options.columns
    interactions_path, items_path = source / options.interactions_file, source / options.items_file
    encoding = options.encoding or "utf-8"
    item_rows = read_csv(items_path, [cols.item_id, cols.title], repairs, encoding, options.encoding_errors)
    items = item_frame(item_rows, items_path, cols.item_id,
                       {"title": cols.title, "description": cols.description, "brand": cols.brand,
                        "category": cols.category}, repairs)
    log = read_csv(interactions_path, [cols.user, cols.item, cols.timestamp], repairs, encoding,
                   options.encoding_errors)
    timestamps = parse_timestamps(log[cols.timestamp], interactions_path, cols.timestamp, repairs)
    rows, keep = resolve_items(log[cols.item], pd.Index(items["raw_id"]), interactions_path, cols.item,
                               options.unknown_items, repairs)
    users, user_names = pd.factorize(log[cols.user][keep])
    interactions = Interactions(users.astype(np.int64), np.asarray(user_names, dtype=object), rows[keep],
                                timestamps[keep])
    return build_dataset(interactions, items, options.protocol, repairs,
                         describe_files("csv", source, [interactions_path, items_path]))
