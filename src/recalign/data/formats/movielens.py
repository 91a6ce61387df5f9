"""``movielens``: MovieLens-1M ``.dat`` files (``ratings.dat`` and ``movies.dat``, ``::``-separated, latin-1).

Every rating counts as an interaction (implicit feedback, as in SASRec and BERT4Rec); the movie title
with its year is the item text and the genres its category. The source may be the ``ml-1m`` folder or
the folder holding it (as ``recalign data download movielens-1m`` leaves it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..dataset import Dataset
from ..problems import DataError, Repairs
from ..sequences import Interactions, build_dataset
from ..textio import iter_lines, unix_seconds
from . import PrepareOptions, describe_files
from .csv_format import item_frame, resolve_items

ENCODING = "latin-1"  # GroupLens ships ML-1M in ISO-8859-1
MOVIE_FIELDS = ("movie_id", "title", "genres")
RATING_FIELDS = ("user_id", "movie_id", "rating", "timestamp")


def read_dat(path: Path, fields: tuple[str, ...], options: PrepareOptions, repairs: Repairs) -> tuple[list, list]:
    """Rows split on '::' with their line numbers; a line with the wrong number of fields is skipped, counted."""
    if not path.exists():
        raise DataError(path, "file not found (expected the MovieLens-1M layout: ratings.dat and movies.dat)")
    rows, lines = [], []
    for line_no, line in iter_lines(path, repairs, options.encoding or ENCODING, options.encoding_errors):
        if not line:
            continue
        parts = line.split("::")
        if len(parts) != len(fields):
            repairs.add("malformed_line", f"{path.name}:{line_no}")
            continue
        rows.append(parts)
        lines.append(line_no)
    if not rows:
        raise DataError(path, f"no line has the {len(fields)} '::'-separated fields {fields}")
    return rows, lines


def integers(values: list[str], lines: list[int], path: Path, field: str) -> np.ndarray:
    """Whole numbers as float64 (exact up to 2^53; larger ones are refused downstream as times)."""
    parsed = pd.to_numeric(pd.Series(values), errors="coerce")
    whole = pd.Series([v.strip().lstrip("-").isdigit() for v in values])
    if parsed.isna().any() or not whole.all():
        bad = int(np.flatnonzero((parsed.isna() | ~whole).to_numpy())[0])
        raise DataError(path, f"expected an integer, got {values[bad]!r}", row=lines[bad], field=field)
    return parsed.to_numpy(dtype=np.float64)


def user_names(values: list[str], lines: list[int], path: Path) -> np.ndarray:
    """User ids as written (identifiers, however long: parsing them as int64 would merge some past 2^63)."""
    names = np.asarray([v.strip() for v in values], dtype=object)
    for position, name in enumerate(names):
        if not name.isdigit():
            raise DataError(path, f"expected an integer user id, got {values[position]!r}", row=lines[position],
                            field="user_id")
    return names


def prepare(source: Path, options: PrepareOptions, repairs: Repairs) -> Dataset:
    folder = source / "ml-1m" if (source / "ml-1m" / "ratings.dat").exists() else source
    movies_path, ratings_path = folder / "movies.dat", folder / "ratings.dat"
    movies, _ = read_dat(movies_path, MOVIE_FIELDS, options, repairs)
    frame = pd.DataFrame(movies, columns=list(MOVIE_FIELDS))
    items = item_frame(frame, movies_path, "movie_id", {"title": "title", "category": "genres"}, repairs)
    ratings, lines = read_dat(ratings_path, RATING_FIELDS, options, repairs)
    columns = list(zip(*ratings))
    users = user_names(list(columns[0]), lines, ratings_path)
    timestamps = unix_seconds(integers(list(columns[3]), lines, ratings_path, "timestamp"), np.asarray(lines),
                              ratings_path, "timestamp", repairs)
    rows, keep = resolve_items(pd.Series(columns[1]), pd.Index(items["raw_id"]), ratings_path, "movie_id",
                               options.unknown_items, repairs, line_numbers=np.asarray(lines))
    codes, names = pd.factorize(users[keep])
    log = Interactions(codes.astype(np.int64), np.asarray(names, dtype=object), rows[keep],
                       timestamps[keep])
    return build_dataset(log, items, options.protocol, repairs,
                         describe_files("movielens", source, [movies_path, ratings_path]))
