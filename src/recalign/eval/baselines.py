"""Non-learned baselines every recommender must beat, behind the same ``score(histories)`` interface.

- ``popularity``: how often each item is a training target.
- ``random``: uniform random scores (seeded; a fresh draw per call).
- ``markov``: first-order transitions, count(last history item -> target) over training examples, with
  popularity (scaled below one count) breaking ties and standing in for unseen transitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import Dataset


class Popularity:
    def __init__(self, dataset: Dataset):
        targets = dataset.examples["train"].column("target").to_numpy()
        self.counts = np.bincount(targets, minlength=dataset.n_items).astype(np.float64)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))


class Random:
    def __init__(self, dataset: Dataset, seed: int = 0):
        self.n_items = dataset.n_items
        self.rng = np.random.default_rng(seed)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return self.rng.random((len(histories), self.n_items))


class Markov:
    def __init__(self, dataset: Dataset):
        self.n_items = dataset.n_items
        train = dataset.examples["train"]
        offsets, values = dataset.histories("train")
        usable = offsets[1:] > offsets[:-1]
        last = values[offsets[1:][usable] - 1].astype(np.int64)
        target = train.column("target").to_numpy()[usable].astype(np.int64)
        self.keys, self.counts = np.unique(last * self.n_items + target, return_counts=True)
        popularity = Popularity(dataset).counts
        self.prior = popularity / (popularity.max() + 1)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = np.tile(self.prior, (len(histories), 1))
        last = np.array([h[-1] if len(h) else -1 for h in histories], dtype=np.int64)
        starts = np.searchsorted(self.keys, last * self.n_items)
        ends = np.searchsorted(self.keys, (last + 1) * self.n_items)
        ends[last < 0] = starts[last < 0]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(histories)), lengths)
        index = np.repeat(starts, lengths) + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        scores[rows, self.keys[index] % self.n_items] += self.counts[index]
        return scores


BASELINES = {"popularity": Popularity, "random": Random, "markov": Markov}


def make_baseline(name: str, dataset: Dataset, seed: int = 0):
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return Random(dataset, seed) if name == "random" else BASELINES[name](dataset)
