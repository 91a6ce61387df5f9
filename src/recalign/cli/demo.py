"""``recalign demo``: the main job on the embedded default catalogue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cf import train_cf
from .common import console, evaluate_scorers, make_protocol, metrics_table
from .data import data_synth, prepare_and_save


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's artefacts.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the synthetic catalogue and of training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Most SASRec epochs (early stopping usually ends sooner).")] = 40,
) -> None:
    """Synthesise a catalogue, prepare it, train SASRec and compare it with the baselines on the test split."""
    from ..data.formats import PrepareOptions
    from ..eval.baselines import make_baseline

    raw, prepared = out / "raw", out / "data"
    data_synth(out=raw, seed=seed)
    prepare_and_save("csv", raw, prepared, PrepareOptions())
    dataset, sasrec = train_cf(prepared, "sasrec", out / "sasrec",
                               train_options=dict(epochs=epochs, patience=3, seed=seed))
    scorers = {name: make_baseline(name, dataset, seed) for name in ("popularity", "random", "markov")}
    ks = (1, 5, 10, 20)
    results = evaluate_scorers(dataset, {**scorers, "sasrec": sasrec}, "test", ks, make_protocol("full", False, 19, 0))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(metrics_table(f"{prepared} (test, full ranking, ± = 95% interval)", results["models"], ks))
    console.print(f"results written to {out / 'results.json'}")
