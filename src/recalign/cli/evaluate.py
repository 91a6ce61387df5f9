"""``recalign eval``: the baselines on a prepared dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import console, evaluate_scorers, fail, load_dataset_or_fail, make_protocol, metrics_table, parse_ks

ProtocolOption = Annotated[str, typer.Option(help="'full' (rank the whole catalogue) or 'sampled' (1 positive + "
                                             "--negatives sampled unseen items).")]
NegativesOption = Annotated[int, typer.Option(help="Sampled protocol: negatives per example.")]
ExcludeOption = Annotated[bool, typer.Option(help="Full protocol: never rank the user's history items.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (metric names like HR@10) instead of a table.")]
KOption = Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")]
TrainedOnOption = Annotated[Path, typer.Option("--data", help="A prepared dataset folder (the catalogue the model was "
                                                              "trained on).")]
SplitOption = Annotated[str, typer.Option(help="Split to evaluate on.")]
RanksOption = Annotated[Path | None, typer.Option("--ranks", help="Also write each row's target rank (0-based, inf = "
                                                            "not ranked) to this parquet file, for paired "
                                                            "comparisons between models on the same rows.")]


def evaluate_command(
    data: Annotated[Path, typer.Option(help="A prepared dataset folder.")],
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    baselines: Annotated[str, typer.Option(help="Comma-separated: popularity, random, markov.")] =
        "popularity,random,markov",
    k: KOption = "1,5,10,20",
    protocol: ProtocolOption = "full",
    negatives: NegativesOption = 19,
    exclude_history: ExcludeOption = False,
    seed: Annotated[int, typer.Option(help="Seed of the random baseline and of negative sampling.")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the baselines on a prepared dataset: HR, NDCG and MRR at each K, with 95% intervals."""
    from ..eval.baselines import make_baseline

    ks = parse_ks(k)
    dataset = load_dataset_or_fail(data)
    declared = make_protocol(protocol, exclude_history, negatives, seed)
    try:
        scorers = {name.strip(): make_baseline(name.strip(), dataset, seed) for name in baselines.split(",")
                   if name.strip()}
    except ValueError as exc:
        fail(str(exc))
    results = {"dataset": str(data), **evaluate_scorers(dataset, scorers, split, ks, declared)}
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        console.print(metrics_table(f"{data} · {split} · {protocol} ranking ({results['n_examples']:,} examples, "
                                    "± = 95% interval)", results["models"], ks))
