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
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from .problems import DataError, Repairs


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


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
            yield line_no, decode_line(raw.rstrip(b"\r\n"), path, line_no, encoding, errors, repairs)


def read_text(path: Path, repairs: Repairs, encoding: str = "utf-8", errors: str = "error") -> str:
    """Whole file as text, with newlines kept exactly as written (titles may hold a bare '\\r')."""
    with open_binary(path) as handle:
        data = handle.read()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        if errors == "error":
            raise DataError(path, f"bytes are not valid {encoding} ({exc.reason}); pass --encoding with the "
                            f"file's encoding, or --encoding-errors replace", row=line_no) from None
    lines = data.split(b"\n")
    return "\n".join(decode_line(raw, path, i, encoding, errors, repairs) for i, raw in enumerate(lines, start=1))


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
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise DataError(path, f"expected a list literal, got {text[:60]!r}", row=row, field=field) from None
    if not isinstance(value, list):
        raise DataError(path, f"expected a list literal, got {text[:60]!r}", row=row, field=field)
    return value


def parse_int(text: str, path: Path, row: int, field: str) -> int:
    try:
        return int(float(text)) if "." in text or "e" in text.lower() else int(text)
    except (TypeError, ValueError):
        raise DataError(path, f"expected an integer, got {text!r}", row=row, field=field) from None


_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


def clean_title(title: str) -> str:
    """HTML entities decoded, tags removed, whitespace collapsed; the text is otherwise kept as written."""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(title))).strip()
