"""What a prepared dataset holds, for ``recalign data stats`` and the prepare summary."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.compute as pc

from .dataset import Dataset


def dataset_stats(dataset: Dataset) -> dict:
    """Counts plus the properties that decide how a dataset must be evaluated and indexed."""
    titles = Counter(dataset.titles)
    shared = {title: n for title, n in titles.items() if n > 1}
    per_split = {}
    for name, table in dataset.examples.items():
        offsets, values = dataset.histories(name)
        lengths = np.diff(offsets)
        targets = table.column("target").to_numpy()
        rows = np.repeat(np.arange(table.num_rows), lengths)
        in_history = np.zeros(table.num_rows, dtype=bool)
        in_history[rows[values == targets[rows]]] = True
        per_split[name] = {
            "examples": table.num_rows,
            "users": len(pc.unique(table.column("user_id"))),
            "distinct_targets": len(pc.unique(table.column("target"))),
            "history_length": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 2),
                               "max": int(lengths.max())} if len(lengths) else None,
            "targets_in_own_history": int(in_history.sum()),
        }
    counts = dataset.counts()
    return {
        **counts,
        "splits": per_split,
        "duplicate_titles": {"titles": len(shared), "items": sum(shared.values())},
        "items_with_description": int(pc.sum(pc.is_valid(dataset.items.column("description"))).as_py() or 0),
        "attributes": [c for c in dataset.items.column_names
                       if c not in ("item_id", "raw_id", "title", "description", "brand", "category")],
        "protocol": dataset.manifest.get("protocol"),
        "repairs": {kind: r["count"] for kind, r in dataset.manifest.get("repairs", {}).items()},
        "content_hash": dataset.manifest.get("content_hash"),
    }
