"""``write_report(run_dir)``: ``RUN_DIR/report/report.md`` and its plots, from the artefacts the stages saved
(``run.json``, each stage's ``stage.json``, the training logs and ``eval-*/results.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REPORT_DIR = "report"


def write_report(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    folders = {stage: run_dir / name for stage, name in run["stages"].items()}
    missing = [stage for stage, folder in folders.items() if not (folder / "stage.json").exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: stages not finished yet: {', '.join(missing)} (run the recipe first)")
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    results = json.loads((folders["eval"] / "results.json").read_text())
    ks = tuple(results["ks"])
    stages = {stage: json.loads((folder / "stage.json").read_text()) for stage, folder in folders.items()}

    sections = [f"# Run report: {run['recipe']}", "",
                f"Evaluation on the first {results['n_examples']:,} rows of the {results['split']} split, every model "
                f"on the same rows; {results['protocol']}. ± is the 95% interval over rows.", "",
                metrics_markdown(results["models"], ks), "", "![metrics](metrics.png)", ""]
    plot_metrics(results["models"], ks, out / "metrics.png")
    if "candidates" in results:
        sections += ["## Candidate protocol (A-LLMRec)", "", *candidate_markdown(results["candidates"]), ""]
    if "index" in folders:
        sections += ["## Semantic IDs", "", *sid_summary(folders["index"], out / "codebooks.png"), "",
                     "![codebook usage](codebooks.png)", ""]
    curves = training_curves(folders, out / "training.png")
    if curves:
        sections += ["## Training", "", *curves, "", "![training](training.png)", ""]
    agreement = cf_agreement(results, stages, out / "agreement.png")
    if agreement:
        sections += ["## Agreement with the CF model", "", agreement, "", "![agreement](agreement.png)", ""]
    sections += ["## Stages", "", "Times are those of the invocation that finished the stage (a resumed stage's "
                 "earlier part is not counted).", "", "| stage | folder | time (s) | finished |", "|---|---|---|---|"]
    sections += [f"| {stage} | `{folders[stage].name}` | {record['seconds']:.1f} | {record['finished']} |"
                 for stage, record in stages.items()]
    (out / "report.md").write_text("\n".join(sections) + "\n")
    return out / "report.md"


def metrics_markdown(models: dict, ks: tuple[int, ...]) -> str:
    names = [f"{metric}@{k}" for metric in ("HR", "NDCG", "MRR") for k in ks]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for name in names:
        best = max(model["metrics"][name] for model in models.values())
        cells = [(f"**{m['metrics'][name]:.4f}**" if m["metrics"][name] == best else f"{m['metrics'][name]:.4f}")
                 + f" ±{m['ci95'][name]:.4f}" for m in models.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metrics(models: dict, ks: tuple[int, ...], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, ("HR", "NDCG")):
        for n, (name, model) in enumerate(models.items()):
            x = np.arange(len(ks)) + n * width
            ax.bar(x, [model["metrics"][f"{metric}@{k}"] for k in ks], width,
                   yerr=[model["ci95"][f"{metric}@{k}"] for k in ks], capsize=3, label=name)
        ax.set_xticks(np.arange(len(ks)) + width * (len(models) - 1) / 2, [f"@{k}" for k in ks])
        ax.set_title(metric)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def candidate_markdown(candidates: dict) -> list[str]:
    any_result = next(iter(candidates.values()))
    groups = list(any_result["groups"])
    lines = [f"Hit@1 among {any_result['n_candidates']} candidates (the target and sampled items outside the history, "
             f"the same sets for every model; rows per group in parentheses).", "",
             "| model | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for name, result in candidates.items():
        lines.append(f"| {name} | " + " | ".join(f"{result['groups'][g]['Hit@1']:.4f} ({result['groups'][g]['rows']})"
                                               for g in groups) + " |")
    return lines


def sid_summary(folder: Path, path: Path) -> list[str]:
    """The SIDs' statistics (collisions, per-level codebook usage and perplexity) and a plot of how many items each
    code of each level carries, codes sorted by use."""
    import matplotlib.pyplot as plt

    from ..index.sid import LEVEL_LETTERS, SemanticIDs

    sids = SemanticIDs.from_pretrained(folder)
    stats = sids.stats
    lines = [f"{stats.items:,} items, {stats.distinct:,} distinct SIDs ({sids.meta.get('method', '?')}, collisions "
             f"{sids.meta.get('collisions', '?')}), {stats.tokens:,} tokens added to the vocabulary; collision rate "
             f"{stats.collision_rate:.2%} ({stats.colliding_items:,} items in {stats.colliding_groups:,} groups).", "",
             "| level | codes used | codebook | perplexity | most items on one code |", "|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for level in stats.levels:
        letter = LEVEL_LETTERS[level.level]
        lines.append(f"| {letter} | {level.codes_used} | {level.codebook_size or '–'} | {level.perplexity:.1f} "
                     f"| {level.max_items_per_code} |")
        counts = pd.Series([sid[level.level] for sid in sids.sids if len(sid) > level.level]).value_counts()
        ax.plot(np.arange(1, len(counts) + 1), counts.to_numpy(), label=f"level {letter}")
    ax.set_xlabel("code (sorted by items)")
    ax.set_ylabel("items")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("codebook usage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


def training_curves(folders: dict[str, Path], path: Path) -> list[str]:
    """The CF model's loss and validation NDCG@10 per epoch, the LLM's loss per optimiser step (and its model
    selection rounds); lines of text for the report, empty when no stage trained."""
    import matplotlib.pyplot as plt

    cf_log = folders["cf"] / "train_log.csv" if "cf" in folders else None
    llm_log = folders["llm"] / "train" / "train_log.csv" if "llm" in folders else None
    logs = [(name, log) for name, log in (("cf", cf_log), ("llm", llm_log)) if log is not None and log.exists()]
    if not logs:
        return []
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 3.8), squeeze=False)
    lines = []
    for ax, (name, log) in zip(axes[0], logs):
        frame = pd.read_csv(log)
        if name == "cf":
            ax.plot(frame["epoch"], frame["loss"], label="training loss")
            ax.set_xlabel("epoch")
            ax.set_ylabel("training loss (blue)")
            if "valid_NDCG@10" in frame:  # absent when the dataset has no validation rows
                twin = ax.twinx()
                twin.plot(frame["epoch"], frame["valid_NDCG@10"], color="tab:orange")
                twin.set_ylabel("validation NDCG@10 (orange)")
                best = frame.loc[frame["valid_NDCG@10"].idxmax()]
                lines.append(f"- CF model: {len(frame)} epochs, best validation NDCG@10 {best['valid_NDCG@10']:.4f} "
                             f"at epoch {int(best['epoch'])}.")
            else:
                lines.append(f"- CF model: {len(frame)} epochs, no validation rows (the last epoch is kept).")
            ax.set_title("CF model")
        else:
            ax.plot(frame["step"], frame["loss"], alpha=0.4, label="loss per step")
            ax.plot(frame["step"], frame["loss"].rolling(10, min_periods=1).mean(), label="mean of 10 steps")
            ax.set_xlabel("optimiser step")
            ax.set_title("LLM recommender")
            lines.append(f"- LLM recommender: {len(frame)} optimiser steps, loss {frame['loss'].iloc[0]:.3f} at the "
                         f"first, {frame['loss'].tail(10).mean():.3f} over the last ten; "
                         f"{frame['tokens'].sum() / frame['seconds'].sum():,.0f} tokens/s.")
            selection = folders["llm"] / "selection.json"
            if selection.exists():
                rounds = json.loads(selection.read_text())
                metric = next(key for key in rounds[0] if key not in ("epoch", "kept"))
                lines.append("- Model selection: " + ", ".join(f"epoch {r['epoch']} {metric} {r[metric]:.4f}"
                                                               + (" (kept)" if r["kept"] else "") for r in rounds))
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


def cf_agreement(results: dict, stages: dict, path: Path) -> str | None:
    """Where the LLM recommender and the CF model hit or miss the same rows at the largest K: a 2 x 2 count, as
    text and plot."""
    import matplotlib.pyplot as plt

    models, k = results["models"], max(results["ks"])
    cf_name = stages.get("cf", {}).get("settings", {}).get("model")
    llm_names = [name for name in models if name.startswith("llm")]
    if cf_name not in models or not llm_names:
        return None
    cf = np.array([r is not None and r < k for r in models[cf_name]["ranks"]])
    llm = np.array([r is not None and r < k for r in models[llm_names[0]]["ranks"]])
    counts = {"both hit": int((cf & llm).sum()), f"only {cf_name}": int((cf & ~llm).sum()),
              "only the LLM": int((~cf & llm).sum()), "both miss": int((~cf & ~llm).sum())}
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(counts), list(counts.values()), color=["tab:green", "tab:blue", "tab:orange", "tab:gray"])
    ax.set_ylabel("rows")
    ax.set_title(f"hits at {k}: {llm_names[0]} vs {cf_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    hits = counts["both hit"] + counts[f"only {cf_name}"] + counts["only the LLM"]
    overlap = counts["both hit"] / hits if hits else float("nan")
    return (f"Hits at {k} on the same {len(cf)} rows: " + ", ".join(f"{name} {n}" for name, n in counts.items())
            + f". Of the rows either model hits, {overlap:.0%} are hit by both.")
