"""Where recalign keeps what it converts or computes once (models, text embeddings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RECALIGN_CACHE``, else ``~/.cache/recalign``."""
    env = os.environ.get("RECALIGN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recalign"
