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

    sections = [f"# Run report: {run['recipe']}", "", *settings_lines(run, stages), "",
                f"Evaluation on the first {results['n_examples']:,} rows of the {results['split']} split, every model "
                f"on the same rows; {results['protocol']}. ± is the 95% interval over rows; a value is in bold "
                "when it is the best and its interval clears every other model's.", "",
                metrics_markdown(results["models"], ks), "", *zero_notes(results["models"], ks),
                "![metrics](metrics.png)", ""]
    plot_metrics(results["models"], ks, out / "metrics.png")
    if "candidates" in results:
        sections += ["## Candidate protocol (A-LLMRec)", "", *candidate_markdown(results["candidates"]), ""]
    if "index" in folders:
        sections += ["## Semantic IDs", "", *sid_summary(folders["index"], out / "codebooks.png"), "",
                     "![codebook usage](codebooks.png)", ""]
    curves = training_curves(folders, stages, out / "training.png")
    if curves:
        sections += ["## Training", "", *curves, "", "![training](training.png)", ""]
    if "rl" in folders and (folders["rl"] / "train" / "rl_log.csv").exists():
        logs = {stages["rl"]["settings"]["train"]["reward"]: folders["rl"] / "train" / "rl_log.csv"}
        sections += ["## RL post-training", "", *rl_curves(logs, out / "rl.png"), "", "![RL](rl.png)", ""]
    agreement = cf_agreement(results, stages, out / "agreement.png")
    if agreement:
        sections += ["## Agreement with the CF model", "", agreement, "", "![agreement](agreement.png)", ""]
    sections += ["## Stages", "", "Times are those of the invocation that finished the stage (a resumed stage's "
                 "earlier part is not counted).", "", "| stage | folder | time (s) | finished |", "|---|---|---|---|"]
    sections += [f"| {stage} | `{folders[stage].name}` | {record['seconds']:.1f} | {record['finished']} |"
                 for stage, record in stages.items()]
    (out / "report.md").write_text("\n".join(sections) + "\n")
    return out / "report.md"


def settings_lines(run: dict, stages: dict) -> list[str]:
    """The ``--set`` overrides the run was loaded with and the precision each LLM stage resolved to."""
    overrides = run.get("overrides") or []
    lines = ["Overrides (`--set`): " + (", ".join(f"`{o}`" for o in overrides) if overrides else "none") + "."]
    for stage, record in stages.items():
        chosen = (record.get("outcome") or {}).get("precision")
        if chosen:
            asked = record["settings"]["train"]["precision"]
            lines.append(f"Precision of the {stage} stage: weights {chosen['weights']}, training {chosen['training']}"
                         + (" (resolved from `auto` on the machine that trained it)." if asked == "auto" else "."))
    return lines


def best_clear_of_others(values: list[float], half_widths: list[float]) -> int | None:
    """The index of the best value when its 95% interval overlaps no other's, else None (no winner to bold)."""
    best = int(np.argmax(values))
    low = values[best] - half_widths[best]
    clear = all(low > v + h for n, (v, h) in enumerate(zip(values, half_widths)) if n != best)
    return best if clear and len(values) > 1 else None


def metrics_markdown(models: dict, ks: tuple[int, ...]) -> str:
    names = [f"{metric}@{k}" for metric in ("HR", "NDCG", "MRR") for k in ks]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for name in names:
        values = [m["metrics"][name] for m in models.values()]
        best = best_clear_of_others(values, [m["ci95"][name] for m in models.values()])
        cells = [(f"**{m['metrics'][name]:.4f}**" if n == best else f"{m['metrics'][name]:.4f}")
                 + f" ±{m['ci95'][name]:.4f}" for n, m in enumerate(models.values())]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def zero_notes(models: dict, ks: tuple[int, ...]) -> list[str]:
    """A line naming the models that hit no row at any K (their bars have no height in the plot)."""
    zero = [name for name, m in models.items() if all(m["metrics"][f"HR@{k}"] == 0 for k in ks)]
    return [f"No hit on these rows at any K (0 everywhere, drawn as a 0 mark in the plot): {', '.join(zero)}.", ""] \
        if zero else []


def plot_metrics(models: dict, ks: tuple[int, ...], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(models)
    labels = {"HR": "hit rate at K (share of rows)", "NDCG": "NDCG at K"}
    for ax, metric in zip(axes, ("HR", "NDCG")):
        for n, (name, model) in enumerate(models.items()):
            x = np.arange(len(ks)) + n * width
            values = np.array([model["metrics"][f"{metric}@{k}"] for k in ks])
            half = np.array([model["ci95"][f"{metric}@{k}"] for k in ks])
            bars = ax.bar(x, values, width, yerr=clipped_errors(values, half), capsize=3, label=name)
            for xi, value in zip(x, values):
                if value == 0:  # a bar of no height: mark it so the model is not taken for missing
                    ax.annotate("0", (xi, 0), ha="center", va="bottom", fontsize=7,
                                color=bars.patches[0].get_facecolor())
        ax.set_xticks(np.arange(len(ks)) + width * (len(models) - 1) / 2, [f"@{k}" for k in ks])
        ax.set_xlabel("K (cut-off)")
        ax.set_ylabel(labels[metric])
        ax.set_ylim(bottom=0)
        ax.set_title(f"{metric} (whiskers: 95% interval)")
    # one legend below both axes, where it covers no bar
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=min(len(models), 6), fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def clipped_errors(values: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """matplotlib's (below, above) error lengths of value ± half width, clipped to [0, 1] where the metrics lie
    (0.01 ± 0.0196 is drawn from 0 to 0.0296)."""
    return np.stack([np.minimum(half_widths, values), np.minimum(half_widths, 1 - values)])


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


def training_curves(folders: dict[str, Path], stages: dict, path: Path) -> list[str]:
    """The CF model's loss and validation NDCG@10 per epoch, the LLM's loss per optimiser step (and its model
    selection rounds); lines of text for the report, empty when no stage trained. A model whose best epoch was
    its last allowed one gets a note: it stopped at the cap while still improving."""
    import matplotlib.pyplot as plt

    cf_log = folders["cf"] / "train_log.csv" if "cf" in folders else None
    llm_log = folders["llm"] / "train" / "train_log.csv" if "llm" in folders else None
    logs = [(name, log) for name, log in (("cf", cf_log), ("llm", llm_log)) if log is not None and log.exists()]
    if not logs:
        return []
    fig, axes = plt.subplots(1, len(logs), figsize=(5.5 * len(logs), 4.4), squeeze=False)
    lines = []
    for ax, (name, log) in zip(axes[0], logs):
        frame, twin = pd.read_csv(log), None
        if name == "cf":
            ax.plot(frame["epoch"], frame["loss"], label="training loss (left axis)")
            ax.set_xlabel("epoch")
            ax.set_ylabel("training loss")
            if "valid_NDCG@10" in frame:  # absent when the dataset has no validation rows
                twin = ax.twinx()
                twin.plot(frame["epoch"], frame["valid_NDCG@10"], color="tab:orange",
                          label="validation NDCG@10 (right axis)")
                twin.set_ylabel("validation NDCG@10")
                best = frame.loc[frame["valid_NDCG@10"].idxmax()]
                lines.append(f"- CF model: {len(frame)} epochs, best validation NDCG@10 {best['valid_NDCG@10']:.4f} "
                             f"at epoch {int(best['epoch'])}.")
                cap = stages.get("cf", {}).get("settings", {}).get("train", {}).get("epochs")
                if cap is not None and int(best["epoch"]) == int(frame["epoch"].max()) and len(frame) >= cap:
                    lines.append(f"- The CF model stopped at its epoch cap ({cap}) while its validation NDCG@10 was "
                                 f"still improving: more epochs may help (`--set cf.train.epochs={2 * cap}`).")
            else:
                lines.append(f"- CF model: {len(frame)} epochs, no validation rows (the last epoch is kept).")
            ax.set_title("CF model")
        else:
            ax.plot(frame["step"], frame["loss"], alpha=0.4, label="loss per step")
            ax.plot(frame["step"], frame["loss"].rolling(10, min_periods=1).mean(), label="mean of 10 steps")
            ax.set_xlabel("optimiser step")
            ax.set_ylabel("training loss")
            ax.set_title("LLM recommender")
            lines.append(f"- LLM recommender: {len(frame)} optimiser steps, loss {frame['loss'].iloc[0]:.3f} at the "
                         f"first, {frame['loss'].tail(10).mean():.3f} over the last ten; "
                         f"{frame['tokens'].sum() / frame['seconds'].sum():,.0f} tokens/s.")
            kind = stages.get("llm", {}).get("outcome", {}).get("training rows")
            if kind:  # which objective: one row per target, or sequence rows (every next item of a window)
                objective = "one row per target" if kind.startswith("target") else "the sequence objective"
                lines.append(f"- LLM training rows ({objective}): {kind.split(': ', 1)[1]}.")
            selection = folders["llm"] / "selection.json"
            if selection.exists():
                rounds = json.loads(selection.read_text())
                metric = next(key for key in rounds[0] if key not in ("epoch", "kept"))
                lines.append("- Model selection: " + ", ".join(f"epoch {r['epoch']} {metric} {r[metric]:.4f}"
                                                               + (" (kept)" if r["kept"] else "") for r in rounds))
                cap = stages.get("llm", {}).get("settings", {}).get("train", {}).get("epochs")
                if len(rounds) > 1 and rounds[-1]["kept"] and rounds[-1]["epoch"] == cap:
                    lines.append(f"- The LLM recommender's last epoch ({cap}, its cap) was its best: it was still "
                                 "improving, more epochs may help.")
        handles = ax.get_legend_handles_labels()[0] + (twin.get_legend_handles_labels()[0] if twin else [])
        # below the axes, where it covers no curve; it names the twin axis's curve too
        ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines


def rl_curves(logs: dict[str, Path], path: Path, window: int = 10) -> list[str]:
    """Mean group reward and KL to the reference per RL step (and their means over ``window`` steps), one line
    per run (``logs``: name -> rl_log.csv); lines of text for a report."""
    import matplotlib.pyplot as plt

    fig, (reward_ax, kl_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = []
    for name, log in logs.items():
        frame = pd.read_csv(log)
        for ax, column in ((reward_ax, "reward_mean"), (kl_ax, "kl")):
            ax.plot(frame["step"], frame[column].rolling(window, min_periods=1).mean(), label=name)
        lines.append(f"- {name}: {len(frame)} steps, mean reward {frame['reward_mean'].head(window).mean():.4f} over "
                     f"the first {window} and {frame['reward_mean'].tail(window).mean():.4f} over the last; target "
                     f"among the beams {frame['target_in_group'].head(window).mean():.3f} -> "
                     f"{frame['target_in_group'].tail(window).mean():.3f}; KL {frame['kl'].tail(window).mean():.3g} "
                     f"at the end; {frame['seconds'].mean():.1f} s per step.")
    reward_ax.set(xlabel="RL step", ylabel=f"mean group reward (mean of {window} steps)", title="reward")
    kl_ax.set(xlabel="RL step", ylabel=f"KL to the reference (k3, mean of {window} steps)", title="KL")
    reward_ax.legend(fontsize=8)
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
