"""``recalign data ...``: prepare, inspect, synthesise and download datasets."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import OverwriteOption, console, fail, load_dataset_or_fail, refuse_to_overwrite

data_app = typer.Typer(help="Prepare, inspect, download and synthesise datasets.", no_args_is_help=True)


@data_app.command("prepare")
def data_prepare(
    format: Annotated[str, typer.Option("--format", "-f", help="Source layout: amazon18, minionerec, amazon-raw, "
                                        "movielens or csv.")],
    source: Annotated[Path, typer.Option(help="Folder holding the source files.")],
    out: Annotated[Path, typer.Option(help="Folder to write the prepared dataset to.")],
    split: Annotated[str, typer.Option(help="For formats with whole logs: 'loo' (leave-one-out per user) or "
                                       "'temporal' (global split by target time).")] = "loo",
    max_history: Annotated[int, typer.Option(help="Longest history kept per example (most recent items).")] = 50,
    valid_fraction: Annotated[float, typer.Option(help="Temporal split: share of examples for valid.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Temporal split: share of examples for test.")] = 0.1,
    min_user: Annotated[int, typer.Option(help="k-core: fewest interactions a user keeps.")] = 5,
    min_item: Annotated[int, typer.Option(help="k-core: fewest interactions an item keeps.")] = 5,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of the source (default: utf-8; latin-1 "
                                                 "for movielens).")] = None,
    encoding_errors: Annotated[str, typer.Option(help="'error' stops at the first undecodable line; 'replace' "
                                                 "substitutes U+FFFD and counts the lines.")] = "error",
    unknown_items: Annotated[str, typer.Option(help="Item ids missing from the item table: 'error' or 'drop' "
                                               "(removed and counted).")] = "error",
    minionerec_train: Annotated[str, typer.Option(help="minionerec without train.csv: 'none' (empty train "
                                                  "split), 'valid' (train on the valid rows) or 'histories' "
                                                  "(train on the items before each valid target).")] = "none",
    interactions_file: Annotated[str, typer.Option(help="csv: interactions file name.")] = "interactions.csv",
    items_file: Annotated[str, typer.Option(help="csv: items file name.")] = "items.csv",
    user_col: Annotated[str, typer.Option(help="csv: user column of the interactions file.")] = "user",
    item_col: Annotated[str, typer.Option(help="csv: item column of the interactions file.")] = "item",
    time_col: Annotated[str, typer.Option(help="csv: timestamp column (Unix seconds or dates).")] = "timestamp",
    item_id_col: Annotated[str, typer.Option(help="csv: item id column of the items file.")] = "item",
    title_col: Annotated[str, typer.Option(help="csv: title column of the items file.")] = "title",
    description_col: Annotated[str, typer.Option(help="csv: optional description column.")] = "description",
    brand_col: Annotated[str, typer.Option(help="csv: optional brand column.")] = "brand",
    category_col: Annotated[str, typer.Option(help="csv: optional category column.")] = "category",
    overwrite: OverwriteOption = False,
) -> None:
    """Read a source dataset, repair or refuse bad input, and write the canonical dataset to --out."""
    refuse_to_overwrite(out, ("manifest.json",), overwrite)
    from ..data.formats import CsvColumns, PrepareOptions
    from ..data.sequences import SplitProtocol

    try:
        options = PrepareOptions(
            protocol=SplitProtocol(split, max_history, valid_fraction, test_fraction, min_user, min_item),
            encoding=encoding, encoding_errors=encoding_errors, unknown_items=unknown_items,
            minionerec_train=minionerec_train, interactions_file=interactions_file, items_file=items_file,
            columns=CsvColumns(user_col, item_col, time_col, item_id_col, title_col, description_col, brand_col,
                               category_col))
    except ValueError as exc:
        fail(str(exc))
    prepare_and_save(format, source, out, options)


def prepare_and_save(format: str, source: Path, out: Path, options) -> None:
    from ..data import DataError
    from ..data.formats import prepare

    try:
        with console.status(f"preparing {source} ({format})"):
            dataset, _ = prepare(format, source, options)
            dataset.save(out)
    except (DataError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    print_summary(dataset, out)


def print_summary(dataset, out: Path) -> None:
    counts = dataset.manifest["counts"]
    table = Table(title=f"prepared {out}", show_header=False)
    table.add_row("items", f"{counts['items']:,}")
    table.add_row("users", f"{counts['users']:,}")
    if counts["interactions"] is not None:
        table.add_row("interactions", f"{counts['interactions']:,}")
    for split, n in counts["examples"].items():
        table.add_row(f"{split} examples", f"{n:,}")
    filtering = dataset.manifest.get("filtering")
    if filtering:
        removed = filtering["interactions_before"] - filtering["interactions_after"]
        table.add_row("k-core removed", f"{removed:,} interactions ({filtering['rounds']} rounds)")
    console.print(table)
    repairs = dataset.manifest.get("repairs", {})
    if repairs:
        repair_table = Table(title="repairs (see manifest.json for where)")
        for column in ("kind", "count", "what"):
            repair_table.add_column(column)
        for kind, record in repairs.items():
            repair_table.add_row(kind, f"{record['count']:,}", record["what"])
        console.print(repair_table)
    else:
        console.print("repairs: none needed")
    for note in dataset.manifest.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")


@data_app.command("stats")
def data_stats(
    path: Annotated[Path, typer.Argument(help="A folder written by `recalign data prepare`.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Counts, history lengths, shared titles and repairs of a prepared dataset."""
    from ..data.stats import dataset_stats

    stats = dataset_stats(load_dataset_or_fail(path))
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    table = Table(title=str(path))
    for column in ("split", "examples", "users", "distinct targets", "history length (min/mean/max)",
                   "targets in own history"):
        table.add_column(column)
    for split, s in stats["splits"].items():
        h = s["history_length"]
        table.add_row(split, f"{s['examples']:,}", f"{s['users']:,}", f"{s['distinct_targets']:,}",
                      f"{h['min']}/{h['mean']}/{h['max']}" if h else "-", f"{s['targets_in_own_history']:,}")
    console.print(table)
    console.print(f"items {stats['items']:,} · users {stats['users']:,} · shared titles "
                  f"{stats['duplicate_titles']['titles']:,} ({stats['duplicate_titles']['items']:,} items) · "
                  f"attributes {stats['attributes'] or 'none'} · repairs {stats['repairs'] or 'none'}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write items.csv and interactions.csv to.")],
    users: Annotated[int, typer.Option(help="Number of users.")] = 3000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 1500,
    seed: Annotated[int, typer.Option(help="Random seed; equal seeds give identical files.")] = 0,
) -> None:
    """Write the synthetic catalogue (the embedded default) in the csv format; prepare it with --format csv."""
    from ..data.synth import write_synthetic

    summary = write_synthetic(out, n_users=users, n_items=items, seed=seed)
    console.print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


@data_app.command("download")
def data_download(
    name: Annotated[str | None, typer.Argument(help="A dataset name: a published split such as "
                                               "tca4rec:Toys_and_Games or minionerec:Industrial_and_Scientific, "
                                               "movielens-1m, or amazon18:<Category>. Without it: the list.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to download into (default: the dataset's folder in the "
                                             "data cache, $RECALIGN_CACHE/data, where recipes look).")] = None,
    base_url: Annotated[str | None, typer.Option(help="A mirror to fetch from instead of the public host; it keeps "
                                                 "the host's layout below it.")] = None,
) -> None:
    """Download a public dataset: resumable, its size said first, pinned SHA-256s verified where published."""
    from ..data.download import DATASETS, DownloadError, download

    if name is None:
        for known, about in DATASETS.items():
            typer.echo(known + "\n" + textwrap.fill(about, 80, initial_indent="    ", subsequent_indent="    ",
                                                     break_on_hyphens=False))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the downloader reports sizes and restarts
    try:
        files = download(name, out, base_url=base_url)
    except (DownloadError, ValueError) as exc:
        fail(str(exc))
    for path in files:
        console.print(f"  {path}", highlight=False, soft_wrap=True)
