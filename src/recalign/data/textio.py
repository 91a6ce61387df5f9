"""Reading source files honestly: encodings, gzip, CSV columns, list literals, title cleaning.

Row numbers in errors: for line-oriented files (JSON lines, ``.dat``) the 1-based line of the file; for
CSV files the 1-based data row (the header is row 0), which is the line number unless a quoted field
spans lines.
"""

from __future__ import annotations

import ast
import gzip
import html
import io
import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .problems import DataError, Repairs

BOM = "\ufeff"  # an encoding mark some editors write first: not part of the first field


@contextmanager
def open_binary(path: Path):
    """The file's bytes (gunzipped for a ``.gz`` name); a folder, a file that is not gzip under a ``.gz`` name
    or a truncated one is a DataError naming it."""
    if path.is_dir():
        raise DataError(path, "is a folder; a file was expected here")
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as handle:
        try:
            yield handle
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            why = f"it ends early, truncated? ({exc})" if isinstance(exc, EOFError) else str(exc)
            raise DataError(path, f"not a readable gzip file: {why}; decompress it or download it again") from None


def decode_line(raw: bytes, path: Path, line_no: int, encoding: str, errors: str, repairs: Repairs) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        if errors == "error":
            raise DataError(path, f"bytes at column {exc.start + 1} are not valid {encoding} ({exc.reason}); "
                            f"pass --encoding with the file's encoding, or --encoding-errors replace",
                            row=line_no) from None
        repairs.add("undecodable_bytes", f"{path.name}:{line_no}")
        return raw.decode(encoding, errors="replace")


def iter_lines(path: Path, repairs: Repairs, encoding: str = "utf-8",
               errors: str = "error") -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, decoded line without its newline), streaming (gzip transparently)."""
    with open_binary(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = decode_line(raw.rstrip(b"\r\n"), path, line_no, encoding, errors, repairs)
            yield line_no, line[1:] if line_no == 1 and line.startswith(BOM) else line


def read_text(path: Path, repairs: Repairs, encoding: str = "utf-8", errors: str = "error") -> str:
    """Whole file as text, with newlines kept exactly as written (titles may hold a bare '\\r')."""
    with open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode(encoding).removeprefix(BOM)
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        if errors == "error":
            raise DataError(path, f"bytes are not valid {encoding} ({exc.reason}); pass --encoding with the "
                            f"file's encoding, or --encoding-errors replace", row=line_no) from None
    lines = data.split(b"\n")
    text = "\n".join(decode_line(raw, path, i, encoding, errors, repairs) for i, raw in enumerate(lines, start=1))
    return text.removeprefix(BOM)


def read_csv(path: Path, required: list[str], repairs: Repairs, encoding: str = "utf-8",
             errors: str = "error", **options) -> pd.DataFrame:
    """A CSV as strings (nothing guessed: no NaN conversion), refusing it when a required column is missing."""
    if not path.exists():
        raise DataError(path, "file not found")
    text = read_text(path, repairs, encoding, errors)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(path, f"not a readable CSV: {exc}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; the header has {list(frame.columns)}",
                        row=0, field=missing[0])
    return frame


def parse_list(text: str, path: Path, row: int, field: str) -> list:
    """A list literal as written by pandas/Python: JSON first (fast), Python literal syntax otherwise."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise DataError(path, f"a list nested too deeply, starting {text[:60]!r}", row=row, field=field) from None
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(path, f"expected a list literal, got {text[:60]!r}", row=row, field=field) from None
    if not isinstance(value, list):
        raise DataError(path, f"expected a list literal, got {text[:60]!r}", row=row, field=field)
    return value


def parse_int(text: str, path: Path, row: int, field: str) -> int:
    """An integer as written, or as a float with no fraction (``2.0``); ``1.9``, ``inf`` or words are errors."""
    try:
        if "." not in text and "e" not in text.lower():
            return int(text)
        value = float(text)
        if value.is_integer():
            return int(value)
    except (TypeError, ValueError):
        pass
    raise DataError(path, f"expected an integer, got {text!r}", row=row, field=field)


SECONDS_LIMIT = 10 ** 11  # Unix seconds past the year 5000: not seconds
MILLISECONDS_LIMIT = 10 ** 14  # the same in milliseconds


def unix_seconds(values: np.ndarray, rows: np.ndarray, path: Path, field: str, repairs) -> np.ndarray:
    """Checked Unix seconds from a column's numbers (float64; NaN where the time is unknown, kept as -1).

    A column whose every time lies past the year 5000 as seconds but before it as milliseconds is read as
    milliseconds (repair ``millisecond_timestamps``); any other time past the year 5000, infinite or beyond
    int64, is an error naming its row. Fractions of a second are dropped (repair ``fractional_timestamp``)."""
    values = np.asarray(values, dtype=np.float64)
    known = ~np.isnan(values)
    size = np.abs(np.where(known, values, 0.0))
    if (size >= SECONDS_LIMIT).any():
        large = known & (size >= SECONDS_LIMIT)
        if large[known].all() and (size[known] < MILLISECONDS_LIMIT).all():
            repairs.add("millisecond_timestamps", f"{path.name} row {int(rows[np.flatnonzero(known)[0]])}",
                        int(known.sum()))
            values = values / 1000
        else:
            bad = int(np.flatnonzero(large & ((size >= MILLISECONDS_LIMIT) | ~large[known].all()))[0])
            why = ("the other rows hold seconds: a column mixing seconds and milliseconds?"
                   if size[bad] < MILLISECONDS_LIMIT else "not a Unix time in seconds or milliseconds")
            raise DataError(path, f"timestamp {values[bad]!r} lies past the year 5000 as seconds; {why}",
                            row=int(rows[bad]), field=field)
    fractional = known & (np.floor(values) != values)
    if fractional.any():
        repairs.add("fractional_timestamp", f"{path.name} row {int(rows[np.flatnonzero(fractional)[0]])}",
                    int(fractional.sum()))
    return np.where(known, np.floor(np.where(known, values, 0.0)), -1).astype(np.int64)


MAX_TITLE_CHARS = 2000  # titles are what an LLM generates: a longer one is a broken field, not a name


def check_title_length(title: str, path: Path, row: int | None, field: str) -> None:
    if len(title) > MAX_TITLE_CHARS:
        raise DataError(path, f"a title of {len(title):,} characters ({title[:40]!r}...); titles are the item "
                        f"identifiers an LLM recommender generates and may hold at most {MAX_TITLE_CHARS:,}",
                        row=row, field=field)


_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """HTML entities decoded, tags removed, whitespace collapsed; the text is otherwise kept as written."""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(title))).strip()
