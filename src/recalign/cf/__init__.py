"""Collaborative-filtering backbones behind one interface (``recalign.cf.base.CFModel``), and their trainer."""

from .base import MODELS, CatalogueMismatch, CFModel, build_model, from_pretrained
from .trainer import TrainConfig, train

__all__ = ["MODELS", "CFModel", "CatalogueMismatch", "TrainConfig", "build_model", "from_pretrained", "train"]
