"""What the sub-commands share: error exit, K parsing, evaluation of several scorers, result tables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)
ThreadsOption = Annotated[int | None, typer.Option(help="torch CPU threads (default: every core on a quiet machine, "
                                                        "the cores left free where other work runs; OMP_NUM_THREADS "
                                                        "is followed).", min=1)]
PrecisionOption = Annotated[str, typer.Option(help="'auto' (bf16 on a GPU that supports it or a CPU with "
                                                   "avx512_bf16/amx, else fp32; the choice is printed), 'bf16' or "
                                                   "'fp32'.")]
DecodePrecisionOption = Annotated[str, typer.Option(help="Precision of the weights while decoding: 'auto' (bf16 "
                                                         "where the GPU or CPU computes it natively, else fp32), "
                                                         "'bf16' or 'fp32'.")]
OverwriteOption = Annotated[bool, typer.Option(help="Replace the finished work of an earlier run in --out.")]


def quiet_transformers() -> None:
    """transformers' per-load progress bars and advice would bury the command's own output (and break --json)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_threads(threads: int | None) -> None:
    from ..threads import default_threads

    threads = threads or default_threads()
    if threads:
        import torch

        torch.set_num_threads(threads)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def refuse_to_overwrite(out, earlier: tuple[str, ...], overwrite: bool, resume: bool | None = None) -> None:
    """Fails when ``out`` holds any of ``earlier`` (what an earlier run leaves: a model, a checkpoint) and neither
    ``--overwrite`` nor, for commands that can continue a run (``resume`` not None), ``--resume`` was given."""
    from pathlib import Path

    out = Path(out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; it must name a folder")
    found = [name for name in earlier if (out / name).exists()]
    if found and not overwrite and not resume:
        fail(f"{out} already holds the work of an earlier run ({', '.join(found)}): "
             + ("--resume continues it, " if resume is not None else "") + "--overwrite replaces it, or choose "
             "another --out")


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        fail(f"--k takes comma-separated integers, got {text!r}")
    if any(k < 1 for k in ks):
        fail("--k values must be at least 1")
    return ks


def evaluate_scorers(dataset, scorers: Mapping[str, object], split: str, ks: tuple[int, ...], protocol,
                     ranks: dict | None = None) -> dict:
    """Every scorer on the same rows under the same declared protocol, as one JSON-ready record; each scorer's
    per-row ranks go into ``ranks`` when given."""
    from ..eval import evaluate
    from ..eval.evaluate import protocol_record

    models = {}
    for name, scorer in scorers.items():
        try:
            result = evaluate(scorer, dataset, split, ks, protocol)
        except ValueError as exc:
            fail(str(exc))
        except KeyError as exc:
            fail(exc.args[0])
        models[name] = {"metrics": result.metrics, "ci95": result.ci95}
        if ranks is not None:
            ranks[name] = result.ranks
    return {"protocol": protocol_record(protocol, split, ks), "n_examples": result.n_examples, "models": models}


def metrics_table(title: str, results: dict[str, dict], ks: tuple[int, ...]) -> Table:
    """One row per metric and one column per model, so that models compare side by side."""
    table = Table(title=title)
    table.add_column("metric")
    for model in results:
        table.add_column(model, justify="right")
    for name in (f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in ks):
        table.add_row(name, *(f"{r['metrics'][name]:.4f} ±{r['ci95'][name]:.4f}" for r in results.values()))
    return table


def write_ranks_file(path: Path, ranks, dataset, split: str) -> None:
    """The per-row ranks of ``--ranks FILE``, beside each row's target."""
    from ..eval.metrics import write_ranks

    targets = dataset.table(split).column("target").to_numpy()[:len(ranks)]
    try:
        write_ranks(path, ranks, targets)
    except OSError as exc:
        fail(f"--ranks {path}: {exc}")


def load_dataset_or_fail(path):
    from ..data import load_dataset

    try:
        return load_dataset(path)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))


def make_protocol(kind: str, exclude_history: bool, negatives: int, seed: int):
    from ..eval import Protocol

    try:
        return Protocol(kind, exclude_history, negatives, seed)
    except ValueError as exc:
        fail(str(exc))


EmbedderOption = Annotated[str, typer.Option(help="sentence-transformers model of the item texts (title, then "
                                                  "description): a hub id, a folder, or the packaged default.")]


def load_cf_or_fail(cf_dir, dataset):
    """A saved CF model of ``dataset``'s catalogue, or a clean CLI failure."""
    from ..cf import from_pretrained
    from ..data import CatalogueMismatch

    try:
        return from_pretrained(cf_dir, dataset)
    except (ValueError, FileNotFoundError, CatalogueMismatch) as exc:
        fail(str(exc))


def refuse_candidate_model(model) -> None:
    """A-LLMRec stage-2 folders pick among given candidates: commands that generate from a history alone refuse
    them with a pointer to the command that judges them."""
    from pathlib import Path

    if (Path(model) / "allmrec.json").exists():
        fail(f"{model} is an A-LLMRec stage-2 model: it picks among given candidates, which this command does not "
             "take; judge it with `recalign allmrec eval`")
