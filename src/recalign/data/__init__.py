"""Data: the canonical dataset, loaders for real sources, the downloader and the synthetic catalogue."""

from .dataset import NO_TIMESTAMP, SPLITS, Dataset, load_dataset
from .problems import DataError, Repairs

__all__ = ["NO_TIMESTAMP", "SPLITS", "Dataset", "DataError", "Repairs", "load_dataset"]
