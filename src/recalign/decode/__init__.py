"""Constrained decoding: beam search that can only emit identifiers of an item index."""

from .beam import BeamConfig, Ranked, beam_search

__all__ = ["BeamConfig", "Ranked", "beam_search"]
