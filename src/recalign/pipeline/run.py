"""Running a recipe: data -> index -> cf -> llm -> rl -> allmrec -> eval, each stage in ``RUN_DIR/<stage>-<key>``.

A stage's key hashes its own settings and the keys of the stages it reads, so changing the LLM's learning rate
reruns the LLM and the evaluation but reuses the data and the CF model. A stage is finished when its folder holds
``stage.json`` (written last); a finished stage is skipped, an unfinished one is rerun and resumes from the
checkpoints its training left (CF: per epoch; LLM: every ``checkpoint_every`` steps). ``run.json`` in the run
folder names the current folder of every stage (for ``recalign serve`` and reports) and the ``--set`` overrides
the recipe was loaded with. A stage may add what it chose on the machine at hand to its ``stage.json`` under
``outcome`` (the LLM stages: the resolved precision).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from ..precision import resolve_precision
from .recipe import Recipe

STAGE_FILE = "stage.json"
RUN_FILE = "run.json"
LOCK_FILE = "run.lock"


@dataclass
class StageOutcome:
    stage: str
    folder: Path
    skipped: bool  # finished by an earlier run with the same settings
    seconds: float  # this run's time on it (0 when skipped)


NOT_IN_RESULTS = ("checkpoint_every", "log_every")  # LLM training settings that change no weight


def stage_settings(recipe: Recipe) -> dict[str, dict]:
    """What each stage is made from: its own settings (for the LLM, the alignment it trains with), and the files
    it reads by path (size and modification time), so that changed files are not taken for finished work."""
    settings = {"data": {**asdict(recipe.data), "files": files_fingerprint(recipe.data.source)}}
    if recipe.index is not None:
        settings["index"] = {**asdict(recipe.index), "files": {"source": files_fingerprint(recipe.index.source),
                                                              "embedder": files_fingerprint(recipe.index.embedder)}}
    if recipe.cf is not None:
        settings["cf"] = asdict(recipe.cf)
    if recipe.llm is not None:
        llm = asdict(recipe.llm)
        for name in NOT_IN_RESULTS:
            llm["train"].pop(name)
        settings["llm"] = {**llm, "files": {"backbone": files_fingerprint(recipe.llm.recommender.backbone),
                                            "prompt": files_fingerprint(recipe.llm.recommender.prompt),
                                            "semantics": files_fingerprint(recipe.llm.semantics)}}
    if recipe.rl is not None:
        settings["rl"] = asdict(recipe.rl)
        for name in NOT_IN_RESULTS:
            settings["rl"]["train"].pop(name)
    if recipe.allmrec is not None:
        settings["allmrec"] = {**asdict(recipe.allmrec), "files": {
            "backbone": files_fingerprint(recipe.allmrec.recommender.backbone),
            "embedder": files_fingerprint(recipe.allmrec.embedder)}}
        for name in NOT_IN_RESULTS:
            settings["allmrec"]["train"].pop(name)
    settings["eval"] = asdict(recipe.eval)
    return settings


def files_fingerprint(path: str | None) -> list | None:
    """(absolute name, size, mtime) of a file, or of every file under a folder; None when ``path`` names no file
    (a packaged backbone, a hub id, a built-in prompt)."""
    if path is None or not Path(path).exists():
        return None
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def stage_inputs(recipe: Recipe) -> dict[str, list[str]]:
    llm_reads_cf = recipe.llm is not None and (recipe.llm.align == "tca" or recipe.llm.recommender.use_feature)
    present = stage_settings(recipe)
    llm_reads = ["data", *(["index"] if "index" in present else []), *(["cf"] if llm_reads_cf else [])]
    rl_reads = ["data", "llm", *(["cf"] if recipe.rl is not None and "cf" in recipe.rl.train.reward else [])]
    return {"data": [], "index": ["data"], "cf": ["data"], "llm": llm_reads, "rl": rl_reads,
            "allmrec": ["data", "cf"],
            "eval": [stage for stage in ("data", "index", "cf", "llm", "rl", "allmrec") if stage in present]}


def stage_keys(recipe: Recipe) -> dict[str, str]:
    keys: dict[str, str] = {}
    inputs = stage_inputs(recipe)
    for stage, settings in stage_settings(recipe).items():
        payload = json.dumps({"settings": settings, "inputs": {name: keys[name] for name in inputs[stage]}},
                             sort_keys=True, default=str)
        keys[stage] = hashlib.sha256(payload.encode()).hexdigest()[:10]
    return keys


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """One run at a time per run folder: two would both train every stage and interleave their logs. The lock is
    the operating system's (released when the process ends, even killed); the file names its holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not yet written its name"
            raise ValueError(f"{run_dir} is in use by another `recalign run` ({holder}); wait for it to finish, "
                             "or give another --run-dir") from None
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)


def run_recipe(recipe: Recipe, run_dir: str | Path, log: Callable[[str], None] = print,
               progress: bool = True, overrides: Sequence[str] = ()) -> list[StageOutcome]:
    """Runs every unfinished stage; ``overrides`` (the ``--set`` strings ``recipe`` was loaded with) are recorded in
    run.json for the report."""
    run_dir = Path(run_dir)
    with run_dir_lock(run_dir):
        return _run_stages(recipe, run_dir, log, progress, overrides)


def _run_stages(recipe: Recipe, run_dir: Path, log: Callable[[str], None], progress: bool,
                overrides: Sequence[str]) -> list[StageOutcome]:
    keys = stage_keys(recipe)
    folders = {stage: run_dir / f"{stage}-{key}" for stage, key in keys.items()}
    (run_dir / RUN_FILE).write_text(json.dumps(
        {"recipe": recipe.name, "stages": {stage: folder.name for stage, folder in folders.items()},
         "overrides": list(overrides)}, indent=2) + "\n")
    outcomes = []
    for stage, folder in folders.items():
        if (folder / STAGE_FILE).exists():
            log(f"{stage}: finished earlier with these settings, skipped ({folder})")
            outcomes.append(StageOutcome(stage, folder, True, 0.0))
            continue
        resumed = folder.exists()
        log(f"{stage}: {'resuming' if resumed else 'running'} in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        outcome = STAGES[stage](recipe, folders, log, progress)
        seconds = time.perf_counter() - started
        (folder / STAGE_FILE).write_text(json.dumps(
            {"stage": stage, "key": keys[stage], "settings": stage_settings(recipe)[stage], "seconds": seconds,
             "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "outcome": outcome or {}},
            indent=2, default=str) + "\n")
        log(f"{stage}: done in {seconds:.1f} s")
        outcomes.append(StageOutcome(stage, folder, False, seconds))
    return outcomes


def _dataset(folders: dict[str, Path]):
    from ..data import load_dataset

    return load_dataset(folders["data"] / "dataset")


def run_data(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> None:
    from ..data.formats import prepare
    from ..data.synth import write_synthetic

    spec, folder = recipe.data, folders["data"]
    if spec.format == "synth":
        summary = write_synthetic(folder / "raw", n_users=spec.synth.users, n_items=spec.synth.items,
                                  seed=spec.synth.seed)
        log("synthetic catalogue: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
        dataset, _ = prepare("csv", folder / "raw", spec.prepare)
    else:
        dataset, _ = prepare(spec.format, Path(spec.source), spec.prepare)
    dataset.save(folder / "dataset")
    counts = dataset.manifest["counts"]
    repairs = dataset.manifest.get("repairs") or {}
    log(f"dataset: {counts['items']:,} items, {counts['users']:,} users, examples "
        + ", ".join(f"{split} {n:,}" for split, n in counts["examples"].items())
        + "; repairs: " + (", ".join(f"{kind} {record['count']:,}" for kind, record in repairs.items())
                           or "none needed"))


def run_index(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> None:
    from ..index.sid import build_sids, import_sids
    from ..index.text import item_texts, text_embeddings

    spec, dataset = recipe.index, _dataset(folders)
    if spec.source == "build":
        embeddings = text_embeddings(item_texts(dataset), spec.embedder, progress=progress)
        sids, training = build_sids(embeddings, dataset.raw_ids, spec.quantizer, spec.collisions)
        sids.meta["embedder"] = spec.embedder
        if training:
            pd.DataFrame(training).to_csv(folders["index"] / "train_log.csv", index=False)
    else:
        sids = import_sids(dataset, None if spec.source == "dataset" else spec.source)
    sids.save_pretrained(folders["index"])
    for line in sids.stats.lines():
        log(f"SIDs: {line}")


def run_cf(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> None:
    import torch

    from ..cf import build_model, train

    spec = recipe.cf
    dataset = _dataset(folders)
    torch.manual_seed(spec.train.seed)  # the initial weights come from the recipe's seed
    model = build_model(spec.model, dataset.n_items, spec.preset, **spec.settings)
    state = train(model, dataset, spec.train, folders["cf"], resume=True, progress=progress)
    log(f"{spec.model}: best epoch {state.best_epoch} of {state.epoch}"
        + (f" (validation NDCG@10 {state.best_score:.4f})" if state.best_score >= 0 else ""))


def run_llm(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> dict:
    from ..align import tsrec
    from ..align.features import CFFeatureInjector
    from ..align.tca import TCALoss
    from ..cf import from_pretrained
    from ..decode.selection import train_with_selection
    from ..index.sid import SemanticIDs
    from ..llm.recommender import LLMRecommender
    from ..llm.train import sft_train, training_rows_summary

    spec, out = recipe.llm, folders["llm"]
    train = replace(spec.train, precision=resolve_precision(spec.train.precision))  # saved resolved with checkpoints
    dataset = _dataset(folders)
    cf_model = from_pretrained(folders["cf"], dataset) if "cf" in folders else None
    feature_hook = partial(CFFeatureInjector.for_recommender, cf_model) if spec.recommender.use_feature else None
    sids, semantics = None, None
    if "index" in folders:
        sids = SemanticIDs.from_pretrained(folders["index"], dataset)
        if spec.sa_init or spec.ts_align:
            semantics, _ = tsrec.load_semantics(spec.semantics, sids.sids, dataset.titles,
                                                spec.teacher or spec.recommender.backbone, spec.recommender.precision)
            tsrec.write_semantics(semantics, out / "token_semantics.json")
    token_init = tsrec.sa_init_hook(semantics, log) if spec.sa_init else None
    recommender = LLMRecommender.create(dataset, spec.recommender, feature_hook, sids, token_init)
    tca = spec.tca if spec.align == "tca" else replace(spec.tca, alpha=0.0)  # MSL / the faithful mask alone
    loss_hook = TCALoss.for_config(cf_model, recommender.index, tca)
    tasks = spec.tasks if sids is not None else ("next_item",)
    examples, counts = tsrec.sid_training_examples(recommender, dataset, tasks, semantics, spec.ts_align,
                                                   spec.max_train_rows, spec.max_examples, train.seed,
                                                   tca.label_mask, spec.rows, spec.context_items)
    if sids is not None:
        log("task mix: " + ", ".join(f"{name} {n:,}" for name, n in counts.items()))
    rows = training_rows_summary(examples)
    log(f"LLM training rows ({spec.rows}): {rows}")
    if spec.selection.every:
        result = train_with_selection(recommender, dataset, examples, train, out, spec.selection, loss_hook,
                                      resume=True, log=log)
    else:
        result = sft_train(recommender.model, examples, train, out / "train", loss_hook=loss_hook, resume=True,
                           progress=progress, pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
        recommender.save_pretrained(out)
    log(f"LLM recommender: {len(examples):,} training rows, {result.steps} optimiser steps, "
        f"{result.tokens_per_second:,.0f} tokens/s; saved in {out}")
    return {"precision": {"weights": recommender.config.precision, "training": train.precision},
            "training rows": f"{spec.rows}: {rows}"}


def run_rl(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> dict:
    from ..align.rl import rl_prompts, rl_train
    from ..cf import from_pretrained
    from ..llm.recommender import LLMRecommender

    spec, out = recipe.rl, folders["rl"]
    train = replace(spec.train, precision=resolve_precision(spec.train.precision))
    dataset = _dataset(folders)
    cf_model = from_pretrained(folders["cf"], dataset) if "cf" in spec.train.reward else None
    recommender = LLMRecommender.from_pretrained(folders["llm"], dataset, merge=True, precision=train.precision)
    prompts, _ = rl_prompts(recommender, dataset, spec.max_train_rows, train.reference_target_lookup)
    result = rl_train(recommender, prompts, train, out / "train", cf_model, resume=True, progress=progress)
    recommender.config = replace(recommender.config, finetune="full", precision=train.precision)  # saved merged
    recommender.save_pretrained(out)
    log(f"RL ({train.reward}): {len(prompts):,} prompts, {result.steps} steps; saved in {out}")
    return {"precision": {"weights": train.precision, "training": train.precision}}


def run_allmrec(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> dict:
    from ..align.allmrec import run_stage1
    from ..align.allmrec_llm import PromptWords, create_stage2, train_stage2
    from ..cf import from_pretrained

    spec, out = recipe.allmrec, folders["allmrec"]
    dataset = _dataset(folders)
    cf_model = from_pretrained(folders["cf"], dataset)
    joint = None
    if spec.soft_tokens:
        _, losses, joint = run_stage1(cf_model, dataset, spec.stage1, out / "stage1", spec.embedder, progress)
        log(f"A-LLMRec stage 1: {len(losses)} epochs, loss {losses[0]['total']:.4f} -> {losses[-1]['total']:.4f}")
    recommender = create_stage2(dataset, cf_model, joint, spec.recommender, spec.cf_dropout)
    train = replace(spec.train, precision=resolve_precision(spec.train.precision))
    result, prompts = train_stage2(recommender, dataset, train, out, PromptWords.for_dataset(spec.dataset_name),
                                   spec.n_candidates, spec.epochs, spec.max_train_rows, resume=True,
                                   progress=progress, rows=spec.stage1.train_rows, selection=spec.selection, log=log)
    steps = result.steps if result is not None else 0
    log(f"A-LLMRec stage 2: {prompts:,} prompts, {steps} optimiser steps; saved in {out}")
    return {"precision": {"weights": recommender.config.precision, "training": train.precision}}


def run_eval(recipe: Recipe, folders: dict[str, Path], log, progress: bool) -> None:
    """Every model of the run on the same rows: the baselines and the CF model rank the whole catalogue, the LLM
    recommender through constrained beam search; results.json holds metrics, 95% intervals and per-row ranks."""
    from ..cf import from_pretrained
    from ..decode import BeamConfig
    from ..decode.recommend import evaluate_llm
    from ..eval.baselines import make_baseline
    from ..eval.metrics import confidence_95, ranking_metrics
    from ..eval.protocols import full_ranking_ranks, split_histories
    from ..llm.recommender import LLMRecommender

    spec = recipe.eval
    dataset = _dataset(folders)
    histories = split_histories(*dataset.histories(spec.split))[:spec.rows]
    targets = dataset.table(spec.split).column("target").to_numpy().astype(np.int64)[:spec.rows]
    scorers = {name: make_baseline(name, dataset, recipe.data.synth.seed) for name in spec.baselines}
    if "cf" in folders:
        scorers[recipe.cf.model] = from_pretrained(folders["cf"], dataset)
    ranks = {name: full_ranking_ranks(scorer, histories, targets) for name, scorer in scorers.items()}
    extra = {}
    if "llm" in folders:
        recommender = LLMRecommender.from_pretrained(folders["llm"], dataset)
        evaluation = evaluate_llm(recommender, dataset, spec.split, spec.ks,
                                  BeamConfig(num_beams=spec.beams, batch_size=spec.batch_size), spec.rows, progress)
        name = f"llm ({recipe.llm.recommender.backbone}" + (f" + {recipe.llm.align})" if recipe.llm.align != "none"
                                                             else ")")
        ranks[name] = evaluation.item_ranks
        extra = {"llm_identifier_metrics": evaluation.identifier_metrics,
                 "llm_users_per_second": evaluation.users_per_second}
    if "rl" in folders:
        post_trained = LLMRecommender.from_pretrained(folders["rl"], dataset)
        evaluation = evaluate_llm(post_trained, dataset, spec.split, spec.ks,
                                  BeamConfig(num_beams=spec.beams, batch_size=spec.batch_size), spec.rows, progress)
        ranks[f"{name} + rl ({recipe.rl.train.reward})"] = evaluation.item_ranks
    if "allmrec" in folders:
        extra["candidates"] = candidate_results(recipe, folders, dataset, scorers.get(recipe.cf.model), progress)
    models = {name: {"metrics": ranking_metrics(r, spec.ks), "ci95": confidence_95(r, spec.ks),
                     "ranks": [None if not np.isfinite(x) else int(x) for x in r]} for name, r in ranks.items()}
    results = {"split": spec.split, "n_examples": len(targets), "ks": list(spec.ks),
               "protocol": "full ranking (baselines, CF); constrained beam search (LLM); pessimistic ties",
               "models": models, **extra}
    (folders["eval"] / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"evaluation: {len(models)} models on {len(targets):,} {spec.split} rows; {folders['eval'] / 'results.json'}")


def candidate_results(recipe: Recipe, folders: dict[str, Path], dataset, cf_model, progress: bool) -> dict:
    """A-LLMRec and the CF model on the same sampled candidate sets (the paper's Hit@1 protocol)."""
    from ..align.allmrec_llm import evaluate_candidates, load_stage2, variant

    spec, n = recipe.eval, recipe.allmrec.n_candidates
    recommender, record = load_stage2(folders["allmrec"], dataset)
    name = record.get("variant") or variant(recipe.allmrec.soft_tokens, recipe.allmrec.recommender.finetune)
    return {name: evaluate_candidates(dataset, spec.split, "sampled", n, spec.seed, spec.rows, recommender, record,
                                      progress=progress),
            recipe.cf.model: evaluate_candidates(dataset, spec.split, "sampled", n, spec.seed, spec.rows,
                                                 cf_model=cf_model, progress=progress)}


STAGES = {"data": run_data, "index": run_index, "cf": run_cf, "llm": run_llm, "rl": run_rl, "allmrec": run_allmrec,
          "eval": run_eval}
