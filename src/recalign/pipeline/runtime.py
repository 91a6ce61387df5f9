"""How long a recipe takes: the runs measured where it was packaged (``runtime.measured`` in its YAML) and the
runs of it measured on this machine, which ``recalign run`` records in ``$RECALIGN_CACHE/recipe-times.json``
whenever it runs a packaged recipe as packaged (no overrides) from start to finish."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

from ..cache import cache_dir
from .recipe import Measured, Recipe

TIMES_FILE = "recipe-times.json"


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def machine_description(gpu: bool) -> str:
    """The CPU model and core count, and the GPU if one is used (as benchmark reports name them)."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        cpu = models[0] if models else cpu
    described = f"{cpu}, {os.cpu_count()} cores"
    if gpu:
        import torch

        return f"{described}, {torch.cuda.get_device_name(0)}"
    return f"{described}, no GPU"


def measured_here(name: str) -> list[Measured]:
    path = cache_dir() / TIMES_FILE
    records = json.loads(path.read_text()).get(name, []) if path.exists() else []
    return [Measured(**record) for record in records]


def record_run(name: str, seconds: float, gpu: bool) -> None:
    """Keep the latest whole run of packaged recipe ``name`` on this machine (one per kind: with or without GPU)."""
    path = cache_dir() / TIMES_FILE
    times = json.loads(path.read_text()) if path.exists() else {}
    kept = [record for record in times.get(name, []) if record["gpu"] != gpu]
    times[name] = [*kept, {"seconds": round(seconds, 1), "machine": machine_description(gpu), "gpu": gpu,
                           "date": date.today().isoformat()}]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(times, indent=2) + "\n")
    tmp.replace(path)


def expected_time(recipe: Recipe, gpu: bool) -> str:
    """A measured whole run on this kind of machine (with or without a GPU): this machine's own first, else the
    packaged one; otherwise what was measured on the other kind, if anything."""
    def minutes(m: Measured) -> str:
        return f"{m.seconds / 60:.0f} min" if m.seconds >= 60 else f"{m.seconds:.0f} s"

    here = [m for m in measured_here(recipe.name) if m.gpu == gpu]
    if here:
        return f"about {minutes(here[0])} (measured on this machine, {here[0].date})"
    packaged = [m for m in recipe.runtime.measured if m.gpu == gpu]
    if packaged:
        m = packaged[0]
        return f"about {minutes(m)} on this kind of machine (measured on {m.machine}{', ' + m.date if m.date else ''})"
    other = "; ".join(f"{minutes(m)} on {m.machine}" for m in recipe.runtime.measured)
    return f"not measured on a {'GPU' if gpu else 'CPU-only'} machine" + (f" (measured: {other})" if other else "")
