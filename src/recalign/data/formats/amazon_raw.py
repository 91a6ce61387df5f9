"""``amazon-raw``: the public Amazon review dumps (2018; 2014 shares the layout), exactly as downloaded.

The source is a directory with one reviews file (``<Category>_5.json.gz`` or ``<Category>.json.gz``) and one
metadata file (``meta_<Category>.json.gz``), gzip or plain, one object per line. Review lines are JSON with
``reviewerID``, ``asin`` and ``unixReviewTime``; metadata lines are JSON with ``asin``, ``title``,
``description`` (list of str), ``brand`` and ``category`` (list of str), or, in the older dumps, Python dict
literals (read with ``ast.literal_eval``; there ``categories`` is a list of paths and the first is used).

Both files are streamed: only three int64 codes per review (user, item, timestamp) and the id-to-code dicts
are kept, never the lines or parsed objects, so memory grows with the interactions, not with the file size
(docs/benchmarks/data.md). Metadata is kept only for items that have reviews; lines naming no such item are
skipped without being parsed.

Text cleaning, for title, description, brand and category entries: ``textio.clean_title`` (HTML entities
decoded, tags removed, whitespace collapsed), then curly quotes and en/em dashes made ASCII, as the TCA4Rec
preprocessing does. Its other steps are not copied: cutting titles to 50 characters, replacing special
characters, and its "delete flag" title for non-ASCII or letterless titles, which lose information.

Bad input and what happens to it:

- a line that is neither JSON nor a dict literal, or a review lacking ``reviewerID``/``asin`` or an integer
  ``unixReviewTime`` (a missing time is not repaired with -1: that would move the review to the start of
  the user's history), or a metadata line lacking ``asin``: skipped, counted as ``malformed_line``;
  a file that is empty or holds no usable line at all is a :class:`DataError`;
- bytes invalid in the encoding: an error naming file and line, or ``undecodable_bytes`` with
  ``--encoding-errors replace``;
- a second metadata row for the same item: skipped, counted as ``duplicate_metadata``;
- an item with no metadata row, or whose cleaned title is empty: its interactions are removed, counted as
  ``item_without_title`` (the count is interactions; the first places name the items);
- repeated (user, item, time) reviews and empty histories: handled by :func:`sequences.build_dataset`.
"""

from __future__ import annotations

import ast
import json
import re
from array import array
from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import Dataset
from ..download import MANIFEST as DOWNLOAD_MANIFEST
from ..problems import DataError, Repairs
from ..sequences import Interactions, build_dataset
from ..textio import check_title_length, clean_title, iter_lines
from . import PrepareOptions, describe_files

SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")
META_PREFIX = "meta_"
USER, ITEM, TIME = "reviewerID", "asin", "unixReviewTime"
TEXT_FIELDS = ("title", "description", "brand", "category")

# An ``asin`` key as JSON or a Python literal writes it. The line's true key always matches, so a line none of
# whose matches is a reviewed item cannot describe one and is skipped unparsed; a match inside some text only
# costs a parse.
_ASIN_KEY = re.compile(r"""["']asin["']\s*:\s*["']([^"'\\]*)["']""")
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"',
                             "\u201e": '"', "\u2013": "-", "\u2014": "-"})
_MAX_TIME = 1 << 62


def find_files(source: Path) -> tuple[Path, Path]:
    """The reviews file and the metadata file of ``source``; anything but exactly one of each is refused."""
    if not source.is_dir():
        raise DataError(source, "amazon-raw reads a directory holding a reviews file and a meta_*.json(.gz) file")
    found = sorted(p for p in source.iterdir()
                   if p.is_file() and p.name.endswith(SUFFIXES) and p.name != DOWNLOAD_MANIFEST)
    meta = [p for p in found if p.name.startswith(META_PREFIX)]
    reviews = [p for p in found if not p.name.startswith(META_PREFIX)]
    if len(reviews) != 1 or len(meta) != 1:
        raise DataError(source, f"expected exactly one reviews file (<Category>_5.json.gz) and one metadata file "
                        f"(meta_<Category>.json.gz); found reviews {[p.name for p in reviews]} and metadata "
                        f"{[p.name for p in meta]}")
    return reviews[0], meta[0]


def parse_object(text: str) -> dict | None:
    """A JSON object, or a Python dict literal as in the older dumps; ``None`` when the line is neither."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def clean_text(text: str) -> str:
    return clean_title(text).translate(_TYPOGRAPHY)


def joined_text(value: object, separator: str) -> str | None:
    """A metadata field that may be a string or a list of strings, cleaned and joined; ``None`` when empty."""
    parts = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    text = separator.join(c for c in (clean_text(p) for p in parts if isinstance(p, str)) if c)
    return text or None


class _LineCheck:
    """Counts a file's usable and malformed lines, so a file with nothing usable is refused, not emptied."""

    def __init__(self, path: Path, repairs: Repairs):
        self.path, self.repairs = path, repairs
        self.usable = self.malformed = 0
        self.first_problem: tuple[int, str | None, str] | None = None

    def bad(self, line_no: int, field: str | None, why: str) -> None:
        self.malformed += 1
        if self.first_problem is None:
            self.first_problem = (line_no, field, why)
        self.repairs.add("malformed_line", f"{self.path.name}:{line_no} ({why})")

    def finish(self) -> None:
        if self.usable:
            return
        if self.first_problem is None:
            raise DataError(self.path, "the file holds no lines")
        line_no, field, why = self.first_problem
        raise DataError(self.path, f"none of its {self.malformed} lines is usable; the first fails with: {why}",
                        row=line_no, field=field)


def _unix_time(value: object) -> int | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_TIME:
        return value
    return None


def read_reviews(path: Path, options: PrepareOptions,
                 repairs: Repairs) -> tuple[dict[str, int], dict[str, int], array, array, array]:
    """Streams the reviews into (users, items, user codes, item codes, timestamps): dicts map raw id to code."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    user_codes, item_codes, times = array("q"), array("q"), array("q")
    check = _LineCheck(path, repairs)
    for line_no, text in iter_lines(path, repairs, options.encoding or "utf-8", options.encoding_errors):
        if not text.strip():
            continue
        record = parse_object(text)
        if record is None:
            check.bad(line_no, None, "not a JSON object")
            continue
        user, item, time = record.get(USER), record.get(ITEM), _unix_time(record.get(TIME))
        if not isinstance(user, str) or not user:
            check.bad(line_no, USER, f"no string '{USER}'")
        elif not isinstance(item, str) or not item:
            check.bad(line_no, ITEM, f"no string '{ITEM}'")
        elif time is None:
            check.bad(line_no, TIME, f"no integer '{TIME}' >= 0")
        else:
            check.usable += 1
            user_codes.append(users.setdefault(user, len(users)))
            item_codes.append(items.setdefault(item, len(items)))
            times.append(time)
    check.finish()
    return users, items, user_codes, item_codes, times


def read_metadata(path: Path, items: dict[str, int], options: PrepareOptions,
                  repairs: Repairs) -> tuple[dict[str, list], list[int]]:
    """Text columns indexed by item code (``None`` where absent), and each item's metadata line (0: none)."""
    columns: dict[str, list] = {name: [None] * len(items) for name in TEXT_FIELDS}
    found_at = [0] * len(items)
    check = _LineCheck(path, repairs)
    for line_no, text in iter_lines(path, repairs, options.encoding or "utf-8", options.encoding_errors):
        if not text.strip():
            continue
        keys = _ASIN_KEY.findall(text)
        if keys and not any(key in items for key in keys):
            check.usable += 1
            continue
        record = parse_object(text)
        asin = None if record is None else record.get(ITEM)
        if not isinstance(asin, str) or not asin:
            check.bad(line_no, None if record is None else ITEM,
                      "not a JSON object or dict literal" if record is None else f"no string '{ITEM}'")
            continue
        check.usable += 1
        code = items.get(asin)
        if code is None:
            continue
        if found_at[code]:
            repairs.add("duplicate_metadata", f"{path.name}:{line_no} (asin {asin}, first at line {found_at[code]})")
            continue
        found_at[code] = line_no
        title = record.get("title")
        columns["title"][code] = clean_text(title) if isinstance(title, str) else None
        if columns["title"][code]:
            check_title_length(columns["title"][code], path, line_no, "title")
        columns["description"][code] = joined_text(record.get("description"), " ")
        columns["brand"][code] = joined_text(record.get("brand"), " ")
        category = record.get("category")
        if category is None and isinstance(record.get("categories"), list) and record["categories"]:
            category = record["categories"][0]
        columns["category"][code] = joined_text(category, " > ")
    check.finish()
    return columns, found_at


def read_source(reviews_path: Path, meta_path: Path, options: PrepareOptions,
                repairs: Repairs) -> tuple[Interactions, pd.DataFrame]:
    """The interaction log and item table of titled items. A function of its own so that the raw arrays and
    metadata lists are freed before :func:`build_dataset`, whose split is the peak of memory."""
    users, items, user_codes, item_codes, times = read_reviews(reviews_path, options, repairs)
    columns, found_at = read_metadata(meta_path, items, options, repairs)

    item = np.frombuffer(item_codes, dtype=np.int64)
    titled = np.fromiter((bool(t) for t in columns["title"]), dtype=bool, count=len(items))
    if not titled.any():
        raise DataError(meta_path, f"none of the {len(items)} reviewed items has a row with a title here; "
                        f"is this the metadata of the same category as {reviews_path.name}?", field="title")
    per_item = np.bincount(item, minlength=len(items))
    for code, asin in enumerate(items):
        if not titled[code]:
            why = f"empty title at {meta_path.name}:{found_at[code]}" if found_at[code] else "no metadata row"
            repairs.add("item_without_title", f"asin {asin}: {why}", int(per_item[code]))

    kept_codes = np.flatnonzero(titled)
    row_of = np.full(len(items), -1, dtype=np.int64)
    row_of[kept_codes] = np.arange(len(kept_codes))
    catalogue = pd.DataFrame({"raw_id": np.array(list(items), dtype=object)[kept_codes],
                              **{name: np.array(columns[name], dtype=object)[kept_codes] for name in TEXT_FIELDS}},
                             dtype=object)  # object, not pandas' Arrow strings: item_table converts once

    keep = titled[item]
    log = Interactions(np.frombuffer(user_codes, dtype=np.int64)[keep], np.array(list(users), dtype=object),
                       row_of[item[keep]], np.frombuffer(times, dtype=np.int64)[keep])
    return log, catalogue


def prepare(source: Path, options: PrepareOptions, repairs: Repairs) -> Dataset:
    reviews_path, meta_path = find_files(source)
    log, catalogue = read_source(reviews_path, meta_path, options, repairs)
    return build_dataset(log, catalogue, options.protocol, repairs,
                         describe_files("amazon-raw", source, [reviews_path, meta_path]))
