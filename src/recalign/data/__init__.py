"""Data: the canonical dataset, loaders for real sources, the downloader and the synthetic catalogue."""

from .dataset import (
                      NO_TIMESTAMP,
                      SPLITS,
                      CatalogueMismatch,
                      Dataset,
                      catalogue_fingerprint,
                      check_same_catalogue,
                      load_dataset,
)
from .problems import DataError, Repairs

__all__ = ["NO_TIMESTAMP", "SPLITS", "CatalogueMismatch", "DataError", "Dataset", "Repairs", "catalogue_fingerprint",
           "check_same_catalogue", "load_dataset"]
