"""``recalign allmrec``: A-LLMRec's two training stages and its candidate-set evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    EmbedderOption,
    OverwriteOption,
    PrecisionOption,
    ThreadsOption,
    console,
    fail,
    load_cf_or_fail,
    load_dataset_or_fail,
    quiet_transformers,
    refuse_to_overwrite,
    set_threads,
)

allmrec_app = typer.Typer(help="A-LLMRec: align a frozen CF model with a frozen LLM (stage 1, stage 2, eval).",
                          no_args_is_help=True)

DataOption = Annotated[Path, typer.Option(help="A prepared dataset folder.")]
CFOption = Annotated[Path, typer.Option(help="A CF model folder (`recalign cf train`); it stays frozen.")]
TrainRowsOption = Annotated[str, typer.Option(help="'all' (every training row: the paper's A-LLMRec_all) or 'last' "
                                                   "(one row per user, its last training item: the paper and the "
                                                   "official code).")]


@allmrec_app.command("stage1")
def stage1(
    data: DataOption,
    cf: CFOption,
    out: Annotated[Path, typer.Option(help="Folder for the alignment network and the joint item embeddings.")],
    embedder: EmbedderOption = "all-MiniLM-L6-v2",
    epochs: Annotated[int, typer.Option(help="Passes over the training rows.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Rows per step.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    item_weight: Annotated[float, typer.Option(help="Weight of the item reconstruction loss.")] = 0.5,
    text_weight: Annotated[float, typer.Option(help="Weight of the text reconstruction loss.")] = 0.2,
    rec_weight: Annotated[float, typer.Option(help="Weight of the recommendation loss.")] = 1.0,
    rec_score: Annotated[str, typer.Option(help="'mean' (the official x.e / d) or 'dot' (the paper's x.e).")] =
        "mean",
    cf_dropout: Annotated[bool, typer.Option(help="The official code's CF model in train mode (dropout on).")] =
        False,
    finetune_text: Annotated[bool, typer.Option(help="Train the sentence encoder too (the paper; slow on CPU).")] =
        False,
    train_rows: TrainRowsOption = "all",
    text_input: Annotated[str, typer.Option(help="'unit' (L2-normalised 'title. description') or 'reference' (the "
                                                 "official raw pooled vector of 'title, description').")] = "unit",
    seed: Annotated[int, typer.Option(help="Seed of initialisation, negatives and order.")] = 0,
    threads: ThreadsOption = None,
) -> None:
    """Stage 1: item and text autoencoders aligned to a shared latent; joint embeddings for every item (text path
    for items the CF model never saw)."""
    set_threads(threads)
    from ..align.allmrec import Stage1Config, run_stage1

    dataset = load_dataset_or_fail(data)
    cf_model = load_cf_or_fail(cf, dataset)
    try:
        config = Stage1Config(item_weight=item_weight, text_weight=text_weight, rec_weight=rec_weight,
                              rec_score=rec_score, epochs=epochs, batch_size=batch_size, lr=lr, cf_dropout=cf_dropout,
                              finetune_text=finetune_text, seed=seed, train_rows=train_rows, text_input=text_input)
        console.print(f"embedding {dataset.n_items:,} item texts with {embedder}")
        _, log, _ = run_stage1(cf_model, dataset, config, out, embedder)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    for row in log:
        console.print(f"epoch {row['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k != "epoch"))
    warm = json.loads((out / "alignment.json").read_text())["warm_items"]
    console.print(f"{warm:,} warm items (enc_I), {dataset.n_items - warm:,} cold items (enc_T); saved in {out}")


@allmrec_app.command("stage2")
def stage2(
    data: DataOption,
    cf: CFOption,
    out: Annotated[Path, typer.Option(help="Folder for the stage-2 recommender.")],
    stage1_dir: Annotated[Path | None, typer.Option("--stage1", help="The stage-1 folder (soft tokens need it).")] =
        None,
    soft_tokens: Annotated[bool, typer.Option(help="A-LLMRec's soft tokens; --no-soft-tokens is a prompt-only "
                                                   "baseline (same prompt): LoRA-tuned (TALLRec-like), or "
                                                   "--zero-shot.")] = True,
    zero_shot: Annotated[bool, typer.Option(help="With --no-soft-tokens: the paper's LLM-only baseline, the LLM "
                                                 "untrained.")] = False,
    backbone: Annotated[str, typer.Option(help="'smollm2-135m', 'tiny', a hub id or a local path.")] =
        "smollm2-135m",
    precision: PrecisionOption = "auto",
    lora_r: Annotated[int, typer.Option(help="LoRA rank (the LLM-only baseline).")] = 8,
    n_candidates: Annotated[int, typer.Option(help="Candidates per prompt (the target among them).")] = 20,
    max_history: Annotated[int, typer.Option(help="History titles shown in the prompt.")] = 10,
    dataset_name: Annotated[str, typer.Option(help="Amazon category for the prompt's words (Movies_and_TV: "
                                                   "watched/movie, Video_Games: played/game, else bought/item).")] =
        "",
    epochs: Annotated[int, typer.Option(help="Passes over the rows (fresh negatives each).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Rows per optimiser step.")] = 4,
    micro_batch_size: Annotated[int, typer.Option(help="Rows per forward pass.")] = 2,
    lr: Annotated[float, typer.Option(help="Adam(W) learning rate.")] = 1e-4,
    optimizer: Annotated[str, typer.Option(help="'adamw' or 'adam' (betas 0.9/0.98: the official code).")] =
        "adamw",
    schedule: Annotated[str, typer.Option(help="'linear' (warm-up, then decay) or 'constant' (the official code).")] =
        "linear",
    warmup_steps: Annotated[int, typer.Option(help="Warm-up steps of the linear schedule.")] = 20,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0: none, the official code).")] = 1.0,
    cf_dropout: Annotated[bool, typer.Option(help="The CF model in train mode (dropout on x_u) while the projectors "
                                                  "train, as the official code.")] = False,
    train_rows: TrainRowsOption = "all",
    max_train_rows: Annotated[int | None, typer.Option(help="The first N training rows only.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the projectors, candidates and order.")] = 0,
    select_every: Annotated[int, typer.Option(help="Optimiser steps between validation rounds: Hit@1 among the "
                                                   "candidates of the valid split's first --select-rows rows, the "
                                                   "best round's model kept in --out (0: off, keep the last).")] = 0,
    select_rows: Annotated[int, typer.Option(help="Validation rows judged each round (the same seeded candidate "
                                                  "sets every round).")] = 200,
    select_patience: Annotated[int, typer.Option(help="Stop after N validation rounds without a Hit@1 gain above "
                                                      "--select-min-delta (0: never).")] = 0,
    select_min_delta: Annotated[float, typer.Option(help="The Hit@1 gain a round must exceed to count as one.")] =
        0.001,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out (judged validation rounds "
                                              "are not judged again).")] = False,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Stage 2: the frozen LLM reads F_U(user) and F_I(items) at soft tokens; only the projectors train."""
    set_threads(threads)
    refuse_to_overwrite(out, ("config.json", "train"), overwrite, resume)
    quiet_transformers()
    import numpy as np

    from ..align.allmrec_llm import PromptWords, Stage2Selection, create_stage2, train_stage2
    from ..llm.backbones import LoraSettings
    from ..llm.recommender import RecommenderConfig
    from ..llm.train import SFTConfig
    from ..precision import resolve_precision

    dataset = load_dataset_or_fail(data)
    if soft_tokens and stage1_dir is None:
        fail("soft tokens need --stage1 DIR (from `recalign allmrec stage1`)")
    if zero_shot and soft_tokens:
        fail("--zero-shot is the prompt-only baseline: give --no-soft-tokens too")
    cf_model = load_cf_or_fail(cf, dataset)
    try:
        precision = resolve_precision(precision)  # saved resolved, in config.json and the checkpoints
        finetune = "frozen" if soft_tokens or zero_shot else "lora"
        config = RecommenderConfig(backbone, precision, finetune, LoraSettings(r=lora_r, alpha=2 * lora_r),
                                   max_history=max_history, seed=seed)
        sft = SFTConfig(epochs=1, batch_size=batch_size, micro_batch_size=micro_batch_size, lr=lr,
                        precision=precision, seed=seed, weight_decay=0.0, optimizer=optimizer, schedule=schedule,
                        warmup_steps=warmup_steps, max_grad_norm=max_grad_norm)
        joint = np.load(stage1_dir / "joint.npy") if soft_tokens else None
        if train_rows not in ("all", "last"):
            raise ValueError(f"--train-rows takes 'all' or 'last', not {train_rows!r}")
        selection = Stage2Selection(select_every, select_rows, select_patience, select_min_delta)
        selection.check(dataset, trains=not zero_shot)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    recommender = create_stage2(dataset, cf_model, joint, config, cf_dropout)
    try:
        result, prompts = train_stage2(recommender, dataset, sft, out, PromptWords.for_dataset(dataset_name),
                                       n_candidates, epochs, max_train_rows, resume, rows=train_rows,
                                       selection=selection, log=console.print)
    except ValueError as exc:  # e.g. --resume with other settings than the interrupted run
        fail(str(exc))
    if result is None:
        console.print(f"LLM-only (zero-shot): nothing trained; saved in {out}")
        return
    trained = sum(p.numel() for module in (recommender.model, recommender.embedding_hook) if module is not None
                  for p in module.parameters() if p.requires_grad)
    kept = ""
    if select_every:
        rounds = json.loads((out / "selection.json").read_text())
        best = [row for row in rounds if row["kept"]][-1]  # the model in --out
        kept = f"; kept step {best['step']} (valid Hit@1 {best['Hit@1']:.4f}, {len(rounds)} rounds judged)"
    console.print(f"trained {trained:,} parameters on {prompts:,} prompts ({result.tokens_per_second:,.0f} "
                  f"tokens/s); saved in {out}{kept}")


@allmrec_app.command("eval")
def evaluate(
    data: DataOption,
    model: Annotated[Path | None, typer.Option(help="A stage-2 folder (`allmrec stage2`).")] = None,
    cf: Annotated[Path | None, typer.Option(help="A CF model: ranks the same candidates by its scores (alone), or "
                                                 "retrieves them (--protocol retrieved).")] = None,
    protocol: Annotated[str, typer.Option(help="'sampled' (target + random negatives, the paper's) or 'retrieved' "
                                               "(the CF model's top items over the whole catalogue).")] = "sampled",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    rows: Annotated[int | None, typer.Option(help="The split's first N rows.")] = None,
    n_candidates: Annotated[int | None, typer.Option(help="Candidates per row (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sampled negatives (the same rows for every model).")] = 0,
    lenient: Annotated[bool, typer.Option(help="Also the paper's free generation + substring match.")] = False,
    hits: Annotated[Path | None, typer.Option(help="Write each row's hit and groups here (parquet: row, target, "
                                                   "hit, warm/cold item, cold user), for paired comparisons of "
                                                   "models on the same rows and candidates.")] = None,
    threads: ThreadsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Hit@1 among the candidates, overall and for warm items, cold items and cold users."""
    set_threads(threads)
    quiet_transformers()
    from ..align.allmrec_llm import candidate_hits, hit_summary, load_stage2

    if model is None and cf is None:
        fail("give --model (a stage-2 folder) or --cf (a CF model), or both for --protocol retrieved")
    dataset = load_dataset_or_fail(data)
    cf_model = load_cf_or_fail(cf, dataset) if cf else None
    recommender, record = None, {}
    if model is not None:
        try:
            recommender, record = load_stage2(model, dataset)
        except (FileNotFoundError, ValueError) as exc:
            fail(str(exc))
    n_candidates = n_candidates or record.get("n_candidates", 20)
    try:
        table = candidate_hits(dataset, split, protocol, n_candidates, seed, rows, recommender, record, cf_model,
                               lenient, progress=not as_json)
    except ValueError as exc:
        fail(str(exc))
    result = hit_summary(table, protocol, split, n_candidates, seed)
    result.update(model=str(model) if model else None, cf=str(cf) if cf else None)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for name, entry in result["groups"].items():
            extra = f", lenient {entry['Hit@1 lenient']:.4f}" if "Hit@1 lenient" in entry else ""
            console.print(f"{name}: Hit@1 {entry['Hit@1']:.4f} ± {entry['ci95']:.4f} over {entry['rows']:,} "
                          f"rows{extra}")
    if hits is not None:  # written last: a benchmark takes it as the sign of a finished evaluation
        try:
            table.to_parquet(hits, index=False)
        except OSError as exc:
            fail(f"--hits {hits}: {exc}")
