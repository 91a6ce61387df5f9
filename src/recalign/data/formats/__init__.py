"""Source formats that ``recalign data prepare --format F`` understands, and the options they share."""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from ..dataset import Dataset
from ..problems import Repairs
from ..sequences import SplitProtocol


@dataclass
class CsvColumns:
    """Column names of the ``csv`` format (flags of ``data prepare``)."""

    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    item_id: str = "item"
    title: str = "title"
    description: str = "description"
    brand: str = "brand"
    category: str = "category"


@dataclass
class PrepareOptions:
    protocol: SplitProtocol = field(default_factory=SplitProtocol)
    encoding: str | None = None  # None: the format's own default (utf-8; latin-1 for MovieLens)
    encoding_errors: str = "error"  # or "replace": bad bytes become U+FFFD, counted per line
    unknown_items: str = "error"  # or "drop": ids absent from the item table are removed, counted
    minionerec_train: str = "none"  # or "valid" or "histories": see formats/minionerec.py
    interactions_file: str = "interactions.csv"
    items_file: str = "items.csv"
    columns: CsvColumns = field(default_factory=CsvColumns)

    def __post_init__(self) -> None:
        for name, value, allowed in (("encoding_errors", self.encoding_errors, ("error", "replace")),
                                     ("unknown_items", self.unknown_items, ("error", "drop")),
                                     ("minionerec_train", self.minionerec_train, ("none", "valid", "histories"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def describe_files(format_name: str, source: Path, files: list[Path]) -> dict:
    """The manifest's record of what a dataset was prepared from: format, path, each file's size and SHA-256."""
    records = {}
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        records[path.name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return {"format": format_name, "path": str(source.resolve()), "files": records}


# format name -> module in this package defining prepare(source, options, repairs) -> Dataset
_MODULES = {"amazon18": "amazon18", "minionerec": "minionerec", "amazon-raw": "amazon_raw",
            "movielens": "movielens", "csv": "csv_format"}
FORMATS = tuple(_MODULES)


def prepare(format_name: str, source: str | Path, options: PrepareOptions | None = None) -> tuple[Dataset, Repairs]:
    """Reads a source in one of ``FORMATS`` into a :class:`Dataset` (not yet saved) and the repairs made."""
    if format_name not in FORMATS:
        raise ValueError(f"unknown format {format_name!r}; choose one of {', '.join(FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    repairs = Repairs()
    loader = importlib.import_module(f"{__name__}.{_MODULES[format_name]}")
    dataset = loader.prepare(source, options or PrepareOptions(), repairs)
    dataset.manifest["repairs"] = repairs.to_dict()
    return dataset, repairs
