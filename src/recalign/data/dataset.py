"""The canonical dataset every later stage reads: items, examples per split, interactions, manifest.

On disk (one directory)::

    items.parquet          item_id (0..N-1, the row number), raw_id, title, description, brand, category,
                           plus source-specific attributes (e.g. ``sid``, a list of semantic-ID tokens)
    examples/train.parquet user_id, user (raw id), history (item ids, oldest first), target, timestamp
    examples/valid.parquet
    examples/test.parquet
    interactions.parquet   user_id, item_id, timestamp, chronological per user (only when the source has
                           full sequences; the amazon18 and minionerec layouts ship examples only)
    manifest.json          source, split protocol, counts, repairs, filtering and a content hash

Timestamps are Unix seconds; ``NO_TIMESTAMP`` (-1) where the source has none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
NO_TIMESTAMP = -1
ITEM_TEXT_COLUMNS = ("title", "description", "brand", "category")

ITEM_ID = pa.int32()
_EXAMPLE_SCHEMA = pa.schema(
    [
        ("user_id", pa.int32()),
        ("user", pa.string()),
        ("history", pa.list_(ITEM_ID)),
        ("target", ITEM_ID),
        ("timestamp", pa.int64()),
    ]
)
_INTERACTION_SCHEMA = pa.schema([("user_id", pa.int32()), ("item_id", ITEM_ID), ("timestamp", pa.int64())])


def example_table(user_id, user, history_offsets, history_values, target, timestamp) -> pa.Table:
    """Builds an examples table from flat arrays (histories as Arrow offsets + values: no Python lists)."""
    history = pa.ListArray.from_arrays(
        pa.array(np.asarray(history_offsets, dtype=np.int32)), pa.array(np.asarray(history_values, dtype=np.int32))
    )
    columns = [
        pa.array(np.asarray(user_id, dtype=np.int32)),
        pa.array(user, type=pa.string()),
        history,
        pa.array(np.asarray(target, dtype=np.int32)),
        pa.array(np.asarray(timestamp, dtype=np.int64)),
    ]
    return pa.Table.from_arrays(columns, schema=_EXAMPLE_SCHEMA)


def interaction_table(user_id, item_id, timestamp) -> pa.Table:
    columns = [pa.array(np.asarray(a, dtype=t.to_pandas_dtype())) for a, t in
               zip((user_id, item_id, timestamp), _INTERACTION_SCHEMA.types)]
    return pa.Table.from_arrays(columns, schema=_INTERACTION_SCHEMA)


def item_table(items: pd.DataFrame) -> pa.Table:
    """Items in canonical column order; ``item_id`` is assigned as the row number."""
    missing = [c for c in ("raw_id", "title") if c not in items.columns]
    if missing:
        raise ValueError(f"item table lacks {missing}")
    frame = items.reset_index(drop=True).copy()
    frame.insert(0, "item_id", np.arange(len(frame), dtype=np.int32))
    for column in ("raw_id", *ITEM_TEXT_COLUMNS):
        if column not in frame.columns:
            frame[column] = None
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    extra = [c for c in frame.columns if c not in ("item_id", "raw_id", *ITEM_TEXT_COLUMNS)]
    frame = frame[["item_id", "raw_id", *ITEM_TEXT_COLUMNS, *extra]]
    schema = pa.schema([("item_id", ITEM_ID)] + [(c, pa.string()) for c in ("raw_id", *ITEM_TEXT_COLUMNS)])
    table = pa.Table.from_pandas(frame[list(schema.names)], schema=schema, preserve_index=False)
    for column in extra:
        table = table.append_column(column, pa.array(frame[column].tolist()))
    return table


class CatalogueMismatch(ValueError):
    """A trained model was asked to work on a catalogue other than the one it was trained on."""


def catalogue_fingerprint(raw_ids: list[str], titles: list[str | None] | None = None) -> str:
    """Of the raw ids, and with ``titles`` of each item's (raw id, title): the titles are what LLMs generate."""
    lines = raw_ids if titles is None else [f"{raw}\t{title}" for raw, title in zip(raw_ids, titles)]
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_same_catalogue(trained_raw_ids: list[str], dataset: Dataset, what: str = "model",
                         trained_titles: list[str | None] | None = None) -> None:
    """Refuses a dataset whose item ids would mean other items than those ``what`` was trained with: other raw
    ids, or (when ``trained_titles`` are known) the same raw ids with other titles."""
    raw_ids = dataset.raw_ids
    advice = f"Train a {what} on this dataset, or prepare the dataset from the same source."
    if raw_ids != trained_raw_ids:
        raise CatalogueMismatch(
            f"this {what} was trained on a catalogue of {len(trained_raw_ids)} items (fingerprint "
            f"{catalogue_fingerprint(trained_raw_ids)}), but the dataset has {len(raw_ids)} items (fingerprint "
            f"{catalogue_fingerprint(raw_ids)}); item ids would not mean the same items. {advice}")
    titles = dataset.titles
    if trained_titles is not None and titles != trained_titles:
        differ = [i for i, (a, b) in enumerate(zip(trained_titles, titles)) if a != b]
        first = differ[0]
        raise CatalogueMismatch(
            f"this {what} was trained on items with the same {len(raw_ids)} raw ids but other titles: {len(differ):,} "
            f"differ, the first item {raw_ids[first]!r} titled {trained_titles[first]!r} then, {titles[first]!r} "
            f"now (fingerprints {catalogue_fingerprint(raw_ids, trained_titles)} and "
            f"{catalogue_fingerprint(raw_ids, titles)}); the items would not be the same. {advice}")


@dataclass
class Dataset:
    """A prepared dataset. ``examples`` maps each split to a table; ``interactions`` may be ``None``."""

    items: pa.Table
    examples: dict[str, pa.Table]
    manifest: dict = field(default_factory=dict)
    interactions: pa.Table | None = None

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    @property
    def raw_ids(self) -> list[str]:
        return self.items.column("raw_id").to_pylist()

    @property
    def titles(self) -> list[str]:
        return self.items.column("title").to_pylist()

    def table(self, name: str) -> pa.Table:
        if name not in self.examples:
            raise KeyError(f"no split {name!r}; this dataset has {list(self.examples)}")
        return self.examples[name]

    def split(self, name: str) -> pd.DataFrame:
        """One split as a DataFrame (``history`` holds numpy arrays)."""
        return self.table(name).to_pandas()

    def histories(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """A split's histories as (offsets, values): history i is values[offsets[i]:offsets[i+1]]."""
        column = self.table(name).column("history").combine_chunks()
        return column.offsets.to_numpy(), column.values.to_numpy()

    def check(self) -> None:
        """Raises ValueError when ids are out of range; every stage may rely on this having passed."""
        if self.items.column("item_id").to_numpy().tolist() != list(range(self.n_items)):
            raise ValueError("item ids are not 0..N-1 in row order")
        for name, table in self.examples.items():
            if table.schema != _EXAMPLE_SCHEMA:
                raise ValueError(f"split {name!r} has schema {table.schema}, expected {_EXAMPLE_SCHEMA}")
            _, values = self.histories(name)
            ids = np.concatenate([values, table.column("target").to_numpy()])
            if len(ids) and (ids.min() < 0 or ids.max() >= self.n_items):
                raise ValueError(f"split {name!r} refers to item ids outside 0..{self.n_items - 1}")

    def content_hash(self) -> str:
        """SHA-256 over the tables' values (not their bytes on disk): equal data gives an equal hash."""
        digest = hashlib.sha256()
        tables = [("items", self.items)] + [(f"examples/{s}", self.examples[s]) for s in sorted(self.examples)]
        if self.interactions is not None:
            tables.append(("interactions", self.interactions))
        for name, table in tables:
            for column_name, column in zip(table.column_names, table.columns):
                digest.update(f"{name}/{column_name}".encode())
                _digest_array(column.combine_chunks(), digest)
        return digest.hexdigest()

    def save(self, out: str | Path) -> Path:
        """Writes the dataset; the files of a dataset saved there before that this one lacks (a split, the
        interactions) are removed, so that loading ``out`` gives this dataset and nothing of the old one."""
        out = Path(out)
        for folder in (out, out / "examples"):
            if folder.is_file():
                raise ValueError(f"{folder} is a file; a dataset is written to a folder")
        (out / "examples").mkdir(parents=True, exist_ok=True)
        self.check()
        pq.write_table(self.items, out / "items.parquet")
        for name, table in self.examples.items():
            pq.write_table(table, out / "examples" / f"{name}.parquet")
        for stale in (out / "examples").glob("*.parquet"):
            if stale.stem not in self.examples:
                stale.unlink()
        if self.interactions is not None:
            pq.write_table(self.interactions, out / "interactions.parquet")
        else:
            (out / "interactions.parquet").unlink(missing_ok=True)
        self.manifest = {**self.manifest, "format_version": FORMAT_VERSION, "counts": self.counts(),
                         "content_hash": self.content_hash()}
        (out / "manifest.json").write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n")
        return out

    def counts(self) -> dict:
        users = set()
        for table in self.examples.values():
            users.update(np.unique(table.column("user_id").to_numpy()).tolist())
        return {
            "items": self.n_items,
            "users": len(users),
            "interactions": None if self.interactions is None else self.interactions.num_rows,
            "examples": {name: self.examples[name].num_rows for name in SPLITS if name in self.examples},
        }

    @classmethod
    def load(cls, path: str | Path) -> Dataset:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{path} is not a prepared dataset (no manifest.json); run `recalign data prepare`")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: format_version {manifest.get('format_version')}, "
                             f"this recalign reads {FORMAT_VERSION}")
        found = {p.stem: p for p in (path / "examples").glob("*.parquet")}
        order = [s for s in SPLITS if s in found] + sorted(set(found) - set(SPLITS))
        examples = {name: pq.read_table(found[name]) for name in order}
        interactions_path = path / "interactions.parquet"
        interactions = pq.read_table(interactions_path) if interactions_path.exists() else None
        dataset = cls(pq.read_table(path / "items.parquet"), examples, manifest, interactions)
        dataset.check()
        if "content_hash" in manifest and dataset.content_hash() != manifest["content_hash"]:
            raise ValueError(f"{path}: the tables do not match the content hash in {manifest_path} (a file was "
                             "changed, added or replaced after `recalign data prepare`); prepare the dataset again")
        return dataset


def _digest_array(array: pa.Array, digest) -> None:
    digest.update(array.is_null().to_numpy(zero_copy_only=False).tobytes())
    if pa.types.is_list(array.type):
        offsets = array.offsets.to_numpy()
        digest.update((offsets - offsets[0]).astype(np.int64).tobytes())
        _digest_array(array.flatten(), digest)
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        digest.update("\x00".join(array.fill_null("").to_pylist()).encode("utf-8", "surrogatepass"))
    else:
        digest.update(array.to_numpy(zero_copy_only=False).tobytes())


def load_dataset(path: str | Path) -> Dataset:
    """Loads a directory written by ``recalign data prepare`` (checked on the way in)."""
    return Dataset.load(path)
