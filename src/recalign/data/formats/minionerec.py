"""``minionerec``: the MiniOneRec / TS-Rec layout (``*.item.json``, ``*.index.json``, ``valid.csv``, ``test.csv``).

Items are keyed "0".."N-1" and keep the shipped semantic IDs as the ``sid`` attribute (a list of tokens
such as ``["<a_236>", "<b_231>", "<c_226>"]``). Split rows carry ``user_id``, ``history_item_id`` (a list
literal, oldest first) and ``item_id``; they have no timestamps.

The public data ships no train file. When ``train.csv`` is absent, ``--minionerec-train`` says what to do:
``none`` (default) leaves the train split empty, for evaluation-only use; ``valid`` trains on the valid rows
and leaves the valid split empty (no held-out model selection; test stays untouched); ``histories`` trains on
the items before each user's first valid target: the history ``h`` of each user's first valid row (the rows of a
user are chronological: each later row's history ends with the earlier row's target) gives the train rows
``(h[:k], h[k])`` for k >= 1, so no valid or test target is ever a train target and valid stays held out. The
choice is recorded in the manifest and printed by ``data prepare``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..dataset import NO_TIMESTAMP, Dataset, item_table
from ..problems import DataError, Repairs
from ..textio import parse_list, read_csv, read_text
from . import PrepareOptions, describe_files
from .csv_format import item_frame
from .given_splits import SplitColumns, read_examples, split_tables

COLUMNS = SplitColumns(user="user_id", history="history_item_id", target="item_id", timestamp=None)


def one_file(source: Path, pattern: str, required: bool = True) -> Path | None:
    found = sorted(source.glob(pattern))
    if len(found) > 1 or (required and not found):
        raise DataError(source, f"expected one {pattern} file, found {[p.name for p in found] or 'none'}")
    return found[0] if found else None


def read_json(path: Path, repairs: Repairs, options: PrepareOptions) -> dict:
    """A JSON object keyed by item id ("0".."N-1"); anything else is refused."""
    try:
        value = json.loads(read_text(path, repairs, options.encoding or "utf-8", options.encoding_errors))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON: {exc.msg}", row=exc.lineno) from None
    except RecursionError:
        raise DataError(path, "JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise DataError(path, f"expected a JSON object keyed by item id, found a {type(value).__name__}")
    numbers = [key for key in value if not key.isdigit()]
    if numbers:
        raise DataError(path, f"item keys must be integers (\"0\".. \"N-1\"), found {numbers[0]!r}", field=numbers[0])
    return value


def item_title(entry: dict, path: Path, key: str) -> str:
    """The title as text: JSON null is an empty title (item_frame's counted ``empty_title`` repair); a number or
    another type is an error, not its string form."""
    title = entry["title"]
    if title is None:
        return ""
    if not isinstance(title, str):
        raise DataError(path, f"title must be text, found {type(title).__name__} {str(title)[:60]!r}",
                        field=f"{key}.title")
    return title


def semantic_id(value, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(token, str) for token in value):
        raise DataError(path, f"a semantic ID must be a non-empty list of token strings such as [\"<a_1>\", "
                        f"\"<b_2>\"], found {str(value)[:60]!r}", field=key)
    return value


def description_text(text: str, path: Path, item: str, repairs: Repairs) -> str | None:
    """Descriptions are shipped as the string form of a Python list of paragraphs (a few do not parse)."""
    if text.startswith("["):
        try:
            text = " ".join(str(part) for part in parse_list(text, path, None, f"{item}.description"))
        except DataError:
            repairs.add("description_not_a_list", f"{path.name} item {item}")
            text = text.strip("[]").strip("'\"")
    return text.strip() or None


def history_rows(users: list, histories: list, targets: list, timestamps: list) -> tuple[list, list, list, list]:
    """Train rows from the history ``h`` of each user's first valid row: ``(h[:k], h[k])`` for every k >= 1. A
    later valid row's history holds the earlier valid targets, so only the first is read; the rows carry no
    timestamp."""
    out: tuple[list, list, list, list] = ([], [], [], [])
    first = {}
    for user, history in zip(users, histories):
        first.setdefault(user, history)
    for user, history in first.items():
        for k in range(1, len(history)):
            for column, value in zip(out, (user, history[:k], history[k], NO_TIMESTAMP)):
                column.append(value)
    return out


def prepare(source: Path, options: PrepareOptions, repairs: Repairs) -> Dataset:
    items_path = one_file(source, "*.item.json")
    raw_items = read_json(items_path, repairs, options)
    keys = sorted(raw_items, key=int)
    for key in keys:
        if not isinstance(raw_items[key], dict) or "title" not in raw_items[key]:
            raise DataError(items_path, "item entry has no 'title'", field=f"{key}.title")
    frame = pd.DataFrame({
        "item": keys,
        "title": [item_title(raw_items[k], items_path, k) for k in keys],
        "description": [description_text(str(raw_items[k].get("description") or ""), items_path, k, repairs)
                        for k in keys],
        "brand": [raw_items[k].get("brand") or None for k in keys],
        "category": [raw_items[k].get("categories") or None for k in keys],
    })
    items = item_frame(frame, items_path, "item", {c: c for c in ("title", "description", "brand", "category")},
                       repairs)
    files = [items_path]
    index_path = one_file(source, "*.index.json", required=False)
    if index_path is not None:
        sids = read_json(index_path, repairs, options)
        missing = [k for k in keys if k not in sids]
        if missing:
            raise DataError(index_path, f"{len(missing)} items have no semantic ID, e.g. item {missing[0]}",
                            field=missing[0])
        items["sid"] = [semantic_id(sids[k], index_path, k) for k in keys]
        files.append(index_path)
    raw_to_item = {int(k): i for i, k in enumerate(keys)}

    per_split, notes = {}, []
    split_paths = {"train": one_file(source, "train*.csv", required=False),
                   "valid": one_file(source, "valid*.csv"), "test": one_file(source, "test*.csv")}
    for split, path in split_paths.items():
        if path is None:
            continue
        rows = read_csv(path, [COLUMNS.user, COLUMNS.history, COLUMNS.target], repairs,
                        options.encoding or "utf-8", options.encoding_errors)
        per_split[split] = read_examples(path, rows, COLUMNS, raw_to_item, options.unknown_items, repairs)
        files.append(path)
    train_from = "train.csv"
    if "train" not in per_split:
        train_from = options.minionerec_train
        if train_from == "valid":
            per_split["train"], per_split["valid"] = per_split["valid"], ([], [], [], [])
            notes.append("no train file: the train split holds the valid rows and the valid split is empty")
        elif train_from == "histories":
            per_split["train"] = history_rows(*per_split["valid"])
            notes.append("no train file: the train split holds the items before each user's first valid target "
                         f"({len(per_split['train'][0]):,} rows from the histories of the users' first valid rows)")
        else:
            per_split["train"] = ([], [], [], [])
            notes.append("no train file: the train split is empty (evaluation only); "
                         "--minionerec-train histories trains on the items before each valid target")
    manifest = {"source": describe_files("minionerec", source, files),
                "protocol": {"kind": "given", "train_from": train_from,
                             "note": "splits as shipped (a global temporal split); no timestamps"},
                "notes": notes}
    order = ("train", "valid", "test")
    return Dataset(item_table(items), split_tables({s: per_split[s] for s in order}), manifest)
