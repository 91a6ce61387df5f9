"""``recalign index``: semantic IDs for a prepared dataset (build, import, statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    EmbedderOption,
    OverwriteOption,
    ThreadsOption,
    console,
    fail,
    load_dataset_or_fail,
    refuse_to_overwrite,
    set_threads,
)

index_app = typer.Typer(help="Item identifiers: build or import semantic IDs and show their statistics.",
                        no_args_is_help=True)

DataOption = Annotated[Path, typer.Option(help="A prepared dataset folder.")]
OutOption = Annotated[Path, typer.Option(help="Folder for the SIDs (sids.json + config.json).")]


def show_stats(sids) -> None:
    meta = sids.meta
    if "collision_rate_before" in meta:
        repairs = meta.get("collision_repairs", {})
        console.print(f"built by {meta['method']} over {meta.get('embedder', '?')} embeddings; collision rate before "
                      f"repair {meta['collision_rate_before']:.2%}; {meta['collisions']}: {repairs.get('moved', 0):,} "
                      f"items moved to a free last-level code, {repairs.get('extra_level', 0):,} given an extra level")
    for line in sids.stats.lines():
        console.print(line)


@index_app.command("build")
def index_build(
    data: DataOption,
    out: OutOption,
    kind: Annotated[str, typer.Option(help="Identifier kind; 'sid' (titles need no build step).")] = "sid",
    method: Annotated[str, typer.Option(help="'rqvae' (RQ-VAE) or 'rqkmeans' (residual k-means).")] = "rqvae",
    embedder: EmbedderOption = "all-MiniLM-L6-v2",
    levels: Annotated[int, typer.Option(help="Code levels.")] = 3,
    codebook_size: Annotated[int, typer.Option(help="Codes per level.")] = 256,
    latent_dim: Annotated[int, typer.Option(help="RQ-VAE latent size.")] = 32,
    epochs: Annotated[int, typer.Option(help="RQ-VAE training epochs.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="RQ-VAE batch size.")] = 4096,
    lr: Annotated[float, typer.Option(help="RQ-VAE learning rate.")] = 1e-3,
    beta: Annotated[float, typer.Option(help="RQ-VAE commitment weight.")] = 0.25,
    collisions: Annotated[str, typer.Option(help="'balance' (move colliding items to free last-level codes, then "
                                                 "a disambiguation level), 'extra_level', or 'keep'.")] = "balance",
    seed: Annotated[int, typer.Option(help="Seed of k-means and the RQ-VAE.")] = 0,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Semantic IDs from item text embeddings by a residual quantiser."""
    set_threads(threads)
    refuse_to_overwrite(out, ("sids.json",), overwrite)
    from ..index.rqvae import QuantizerConfig
    from ..index.sid import build_sids
    from ..index.text import item_texts, text_embeddings

    if kind != "sid":
        fail(f"--kind {kind!r}: only 'sid' is built (title identifiers come from the tokenizer at training time)")
    dataset = load_dataset_or_fail(data)
    try:
        config = QuantizerConfig(method=method, levels=levels, codebook_size=codebook_size, latent_dim=latent_dim,
                                 epochs=epochs, batch_size=batch_size, lr=lr, beta=beta, seed=seed)
        console.print(f"embedding {dataset.n_items:,} item texts with {embedder}")
        embeddings = text_embeddings(item_texts(dataset), embedder, progress=True)

        def progress(row: dict) -> None:
            console.print(f"epoch {row['epoch']}: reconstruction {row['reconstruction']:.5f}, collision rate "
                          f"{row['collision_rate']:.2%}, codes used per level {row['codes_used']}")

        sids, log = build_sids(embeddings, dataset.raw_ids, config, collisions, progress)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    sids.meta["embedder"] = embedder
    sids.save_pretrained(out)
    if log:
        import pandas as pd

        pd.DataFrame(log).to_csv(out / "train_log.csv", index=False)
    show_stats(sids)
    console.print(f"SIDs saved in {out}")


@index_app.command("import")
def index_import(
    data: DataOption,
    out: OutOption,
    source: Annotated[Path | None, typer.Option(help="A *.index.json (raw item id -> token list); default: the SIDs "
                                                     "the dataset carries (minionerec format).")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Shipped semantic IDs (MiniOneRec's *.index.json) as a SID folder of this dataset."""
    from ..index.sid import import_sids

    refuse_to_overwrite(out, ("sids.json",), overwrite)
    dataset = load_dataset_or_fail(data)
    try:
        sids = import_sids(dataset, source)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    sids.save_pretrained(out)
    show_stats(sids)
    console.print(f"SIDs saved in {out}")


@index_app.command("stats")
def index_stats(path: Annotated[Path, typer.Argument(help="A SID folder.")]) -> None:
    """Collision rate, codebook usage and perplexity per level."""
    from ..index.sid import SemanticIDs

    try:
        show_stats(SemanticIDs.from_pretrained(path))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
