"""Collaborative-filtering backbones behind one interface (``recalign.cf.base.CFModel``), and their trainer."""

from .base import MODELS, CatalogueMismatch, CFModel, build_model, from_pretrained
from .trainer import TrainConfig, TrainingDiverged, train

__all__ = ["MODELS", "CFModel", "CatalogueMismatch", "TrainConfig", "TrainingDiverged", "build_model",
           "from_pretrained", "train"]
