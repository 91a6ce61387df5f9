"""``amazon18``: the TCA4Rec layout of Amazon 2018 categories (``item.csv`` + train/valid/test CSVs).

``item.csv`` holds ``rawid`` (ASIN), ``title``, ``iid`` (1-based) and optionally ``brand``; each split file
holds one row per example: ``uid``, ``iid`` (the target), ``hist_id`` (a list literal of earlier item ids,
oldest first) and ``timestamp``. The given splits are kept exactly; item ids become ``iid - 1`` order.
Ratings and labels in the split files are not carried over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dataset import Dataset, item_table
from ..problems import DataError, Repairs
from ..textio import parse_int, read_csv
from . import PrepareOptions, describe_files
from .csv_format import item_frame
from .given_splits import SplitColumns, read_examples, split_tables

COLUMNS = SplitColumns(user="uid", history="hist_id", target="iid", timestamp="timestamp")


def split_file(source: Path, split: str) -> Path:
    found = sorted(source.glob(f"{split}*.csv"))
    if len(found) != 1:
        raise DataError(source, f"expected one {split}*.csv file (e.g. {split}_5000.csv), found "
                        f"{[p.name for p in found] or 'none'}")
    return found[0]


def prepare(source: Path, options: PrepareOptions, repairs: Repairs) -> Dataset:
    encoding = options.encoding or "utf-8"
    items_path = source / "item.csv"
    rows = read_csv(items_path, ["rawid", "title", "iid"], repairs, encoding, options.encoding_errors)
    items = item_frame(rows, items_path, "iid", {"title": "title", "brand": "brand"}, repairs)
    raw_iids = [parse_int(v, items_path, row, "iid") for row, v in enumerate(items["raw_id"], start=1)]
    order = np.argsort(raw_iids, kind="stable")
    items = items.iloc[order].reset_index(drop=True)
    items["raw_id"] = rows["rawid"].to_numpy(dtype=object)[order]
    raw_to_item = {raw_iids[row]: position for position, row in enumerate(order)}

    paths = {split: split_file(source, split) for split in ("train", "valid", "test")}
    per_split = {}
    for split, path in paths.items():
        frame = read_csv(path, [COLUMNS.user, COLUMNS.history, COLUMNS.target, COLUMNS.timestamp], repairs,
                         encoding, options.encoding_errors)
        per_split[split] = read_examples(path, frame, COLUMNS, raw_to_item, options.unknown_items, repairs)
    manifest = {"source": describe_files("amazon18", source, [items_path, *paths.values()]),
                "protocol": {"kind": "given", "note": "splits as shipped (a global temporal split, sampled)"}}
    return Dataset(item_table(items), split_tables(per_split), manifest)
