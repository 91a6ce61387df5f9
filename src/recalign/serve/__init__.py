"""Serving: a FastAPI app over a saved LLM recommender, with concurrent requests micro-batched through the
constrained decoder. ``recalign serve --model DIR`` starts it."""

from .app import ServeSettings, create_app
from .batcher import MicroBatcher

__all__ = ["MicroBatcher", "ServeSettings", "create_app"]
