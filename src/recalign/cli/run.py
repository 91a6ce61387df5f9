"""``recalign run RECIPE``: every stage of a recipe, skipping those already finished; ``recalign demo`` is the
packaged demo recipe."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Annotated

import typer

from .common import ThreadsOption, console, err, fail, metrics_table, quiet_transformers, set_threads

OfflineOption = Annotated[bool, typer.Option("--offline", help="Fetch nothing: a dataset missing from the data "
                                                               "cache is an error naming the command to fetch it.")]


def run_command(
    recipe: Annotated[str, typer.Argument(help="A recipe YAML file, or the name of a packaged recipe.")],
    run_dir: Annotated[Path | None, typer.Option(help="Folder of the run's stages (default: runs/NAME).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: dotted.name=value (YAML), "
                                                                "repeatable, e.g. --set llm.train.lr=1e-3.")] = None,
    threads: ThreadsOption = None,
    offline: OfflineOption = False,
) -> None:
    """Run a recipe: data -> CF model -> LLM recommender (+ alignment) -> evaluation, each stage in a folder keyed
    by its settings; finished stages are skipped, an interrupted one resumes from its checkpoints. Data named in
    the recipe (tca4rec:Toys_and_Games) is fetched into the data cache first unless --offline."""
    run_recipe_and_report(recipe, run_dir, set_ or [], threads, offline)


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder of `recalign run` (it holds run.json).")],
) -> None:
    """Write RUN_DIR/report/report.md: metric tables, training curves and CF agreement, with PNG plots."""
    from ..report import write_report

    if not (run_dir / "run.json").exists():
        fail(f"{run_dir} is not a run folder of `recalign run` (no run.json)")
    try:
        console.print(f"report written to {write_report(run_dir)}")
    except FileNotFoundError as exc:
        fail(str(exc))


def list_recipes() -> None:
    """The recipes shipped with recalign: what each runs, the data it fetches, whether it needs a GPU and how long
    it took where measured."""
    from ..pipeline import load_recipe, named_data, packaged_recipes
    from ..pipeline.runtime import expected_time, gpu_available

    gpu = gpu_available()
    for name in packaged_recipes():
        recipe = load_recipe(name)
        typer.echo(name)
        for line in (recipe.description, f"data: {data_line(recipe, named_data(recipe))}",
                     f"GPU: {'needed' if recipe.runtime.gpu else 'not needed'}"
                     + (" (this machine has none)" if recipe.runtime.gpu and not gpu else ""),
                     f"time: {expected_time(recipe, gpu)}"):
            typer.echo(textwrap.fill(line, 80, initial_indent="    ", subsequent_indent="      ",
                                     break_on_hyphens=False))


def data_line(recipe, named: dict[str, str]) -> str:
    from ..data.download import PUBLISHED, cache_problems, human_size

    if recipe.data.format == "synth":
        return "synthetic (generated, nothing to fetch)"
    if not named:
        return f"the local folder {recipe.data.source}"
    parts = []
    for dataset in dict.fromkeys(named.values()):
        size = f", {human_size(PUBLISHED[dataset].size)}" if dataset in PUBLISHED else ""
        parts.append(f"{dataset} ({'in the cache' if not cache_problems(dataset) else 'to download' + size})")
    return ", ".join(parts)


def run_recipe_and_report(recipe: str, run_dir: Path | None, overrides: list[str], threads: int | None,
                          offline: bool = False) -> Path:
    from ..data.download import DownloadError
    from ..pipeline import RecipeError, load_recipe, packaged_recipes, run_recipe, with_local_data
    from ..pipeline.runtime import expected_time, gpu_available, record_run

    set_threads(threads)
    quiet_transformers()
    try:
        loaded = load_recipe(recipe, overrides)
    except RecipeError as exc:
        fail(str(exc))
    as_packaged = recipe in packaged_recipes() and loaded == load_recipe(recipe)  # its time is worth keeping
    gpu = gpu_available()
    if loaded.runtime.gpu and not gpu:
        sibling = f"{loaded.name}-cpu"
        err.print(f"[bold yellow]warning:[/] {loaded.name} is a GPU recipe and this machine has no CUDA GPU: on the "
                  f"CPU it would run for days."
                  + (f" `recalign run {sibling}` is its CPU-scale version." if sibling in packaged_recipes() else ""),
                  highlight=False, soft_wrap=True)
    run_dir = run_dir or Path("runs") / loaded.name
    console.print(f"recipe {loaded.name!r} -> {run_dir}; expected time: {expected_time(loaded, gpu)}",
                  highlight=False, soft_wrap=True)
    try:
        loaded = with_local_data(loaded, offline=offline, log=lambda line: console.print(line, highlight=False,
                                                                                          soft_wrap=True))
    except (DownloadError, ValueError) as exc:
        fail(str(exc))
    try:
        outcomes = run_recipe(loaded, run_dir, log=console.print, overrides=overrides)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if as_packaged and not any(o.skipped for o in outcomes):
        record_run(loaded.name, sum(o.seconds for o in outcomes), gpu)
    results = json.loads((outcomes[-1].folder / "results.json").read_text())
    ks = tuple(results["ks"])
    console.print(metrics_table(f"{loaded.name}: {results['split']}, first {results['n_examples']:,} rows, every model "
                                "on the same rows (± = 95% interval)", results["models"], ks))
    from ..report import write_report

    report = write_report(run_dir)
    skipped = [o.stage for o in outcomes if o.skipped]
    console.print(f"stages run: {', '.join(o.stage for o in outcomes if not o.skipped) or 'none'}"
                  + (f"; skipped (finished earlier): {', '.join(skipped)}" if skipped else "")
                  + f"; results in {outcomes[-1].folder / 'results.json'}; report in {report}")
    for line in artefact_lines({o.stage: o.folder for o in outcomes}):
        console.print(line, highlight=False, soft_wrap=True)
    return run_dir


ARTEFACTS = {"data": ("dataset folder", "dataset", "--data of `eval`, `cf`, `llm` and `allmrec` commands"),
             "index": ("semantic IDs", "", "--sids of `llm train`"),
             "cf": ("CF model", "", "--model-dir of `cf eval`, --cf of `llm train` and `allmrec`"),
             "llm": ("LLM recommender", "", "--model of `recommend`, `serve` and `llm eval`"),
             "allmrec": ("A-LLMRec stage 2", "", "--model of `allmrec eval`")}


def artefact_lines(folders: dict[str, Path]) -> list[str]:
    """Where each stage's artefact is, and which commands take it (so nobody has to read run.json)."""
    lines = ["artefacts:"]
    for stage, (what, inside, used_by) in ARTEFACTS.items():
        if stage in folders:
            lines.append(f"  {what}: {folders[stage] / inside if inside else folders[stage]}  ({used_by})")
    if "llm" in folders and "data" in folders:
        lines.append(f"  try: recalign recommend --model {folders['llm']} --history 0,1,2 --exclude-history")
    return lines
