"""``recalign cf ...``: train and evaluate collaborative-filtering backbones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    OverwriteOption,
    ThreadsOption,
    console,
    evaluate_scorers,
    fail,
    load_dataset_or_fail,
    make_protocol,
    metrics_table,
    parse_ks,
    refuse_to_overwrite,
    set_threads,
    write_ranks_file,
)
from .evaluate import (
    ExcludeOption,
    JsonOption,
    KOption,
    NegativesOption,
    ProtocolOption,
    RanksOption,
    SplitOption,
    TrainedOnOption,
)

cf_app = typer.Typer(help="Train and evaluate CF backbones (SASRec, GRU4Rec, BERT4Rec, NextItNet, MF, NCF).",
                     no_args_is_help=True)


CF_OUTPUTS = ("model.safetensors", "checkpoint")  # what a run of `cf train` leaves in --out


def train_cf(data: Path, model: str, out: Path, preset: str | None = None, resume: bool = False,
             overrides: dict | None = None, train_options: dict | None = None, progress: bool = True):
    """Builds, trains and saves a model; returns the best model, loaded back from ``out``."""
    import torch

    from ..cf import TrainConfig, TrainingDiverged, build_model, from_pretrained, train

    dataset = load_dataset_or_fail(data)
    try:
        config = TrainConfig(**(train_options or {}))
        torch.manual_seed(config.seed)  # before the model is built: its initial weights come from the seed
        cf_model = build_model(model, dataset.n_items, preset, **(overrides or {}))
    except (ValueError, TypeError) as exc:
        fail(str(exc))
    if dataset.table("train").num_rows == 0:
        fail(f"{data} has no training examples")
    try:
        state = train(cf_model, dataset, config, out, resume=resume, progress=progress)
    except (ValueError, FileNotFoundError, TrainingDiverged) as exc:  # e.g. --resume from another run's checkpoint
        fail(str(exc))
    best = from_pretrained(out, dataset)
    console.print(f"{model}: best epoch {state.best_epoch} of {state.epoch}; model saved in {out}")
    return dataset, best


@cf_app.command("train")
def cf_train(
    data: Annotated[Path, typer.Option(help="A prepared dataset folder.")],
    model: Annotated[str, typer.Option(help="sasrec, gru4rec, bert4rec, nextitnet, mf or ncf.")],
    out: Annotated[Path, typer.Option(help="Folder for the trained model, checkpoints and train_log.csv.")],
    preset: Annotated[str | None, typer.Option(help="Named settings of a model, e.g. sasrec's 'tca4rec' or "
                                               "'allmrec' (the backbones of those papers).")] = None,
    hidden: Annotated[int | None, typer.Option(help="Embedding / hidden size.")] = None,
    max_len: Annotated[int | None, typer.Option(help="Longest history the model reads.")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout probability.")] = None,
    loss: Annotated[str | None, typer.Option(help="ce, bce, bpr or cloze (the model's default if unset).")] = None,
    positions: Annotated[str | None, typer.Option(help="'all' positions or the 'last' one predict.")] = None,
    negatives_exclude_history: Annotated[bool | None, typer.Option(
        help="Sampled negatives avoid the row's history, not only the target (the tca4rec and allmrec presets' "
             "default, as the reference code).")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs to train.")] = 100,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 0.0,
    patience: Annotated[int, typer.Option(help="Epochs without a better valid NDCG@10 before stopping.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, shuffling, sampling and dropout.")] = 42,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Train a CF model with early stopping on validation NDCG@10, checkpointing every epoch."""
    set_threads(threads)
    refuse_to_overwrite(out, CF_OUTPUTS, overwrite, resume)
    overrides = dict(hidden=hidden, max_len=max_len, dropout=dropout, loss=loss, positions=positions,
                     negatives_exclude_history=negatives_exclude_history)
    train_options = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, patience=patience,
                         seed=seed)
    dataset, best = train_cf(data, model, out, preset, resume, overrides, train_options)
    ks = (1, 5, 10, 20)
    results = evaluate_scorers(dataset, {model: best}, "test", ks, make_protocol("full", False, 19, 0))
    (out / "test_metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(metrics_table(f"{model} on {data} (test, full ranking, ± = 95% interval)", results["models"], ks))


@cf_app.command("eval")
def cf_eval(
    data: TrainedOnOption,
    model_dir: Annotated[Path, typer.Option(help="A folder written by `recalign cf train`.")],
    split: SplitOption = "test",
    k: KOption = "1,5,10,20",
    protocol: ProtocolOption = "full",
    negatives: NegativesOption = 19,
    exclude_history: ExcludeOption = False,
    seed: Annotated[int, typer.Option(help="Seed of negative sampling.")] = 0,
    ranks: RanksOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a trained CF model: HR, NDCG and MRR at each K (JSON keys like NDCG@10)."""
    from ..cf import from_pretrained

    ks = parse_ks(k)
    dataset = load_dataset_or_fail(data)
    try:
        model = from_pretrained(model_dir, dataset)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: another catalogue, another kind of folder, damage
        fail(str(exc))
    declared = make_protocol(protocol, exclude_history, negatives, seed)
    row_ranks: dict = {}
    results = evaluate_scorers(dataset, {model.model_type: model}, split, ks, declared, row_ranks)
    (result,) = results["models"].values()
    if ranks:
        write_ranks_file(ranks, row_ranks[model.model_type], dataset, split)
    if as_json:
        typer.echo(json.dumps({**result["metrics"], "ci95": result["ci95"], "protocol": results["protocol"],
                               "n_examples": results["n_examples"], "model_dir": str(model_dir)}, indent=2))
    else:
        console.print(metrics_table(f"{model_dir} on {data} · {split} · {protocol} ranking "
                                    f"({results['n_examples']:,} examples, ± = 95% interval)", results["models"], ks))
