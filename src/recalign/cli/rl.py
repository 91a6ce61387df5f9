"""``recalign llm rl``: GRPO post-training of a saved recommender over its constrained beams (MiniOneRec's stage 2)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from .common import (
    OverwriteOption,
    PrecisionOption,
    ThreadsOption,
    console,
    fail,
    load_cf_or_fail,
    load_dataset_or_fail,
    quiet_transformers,
    refuse_candidate_model,
    refuse_to_overwrite,
    set_threads,
)

RL_RECORD = "rl.json"


def llm_rl(
    model: Annotated[Path, typer.Option(help="The SFT recommender (a folder from `recalign llm train`).")],
    data: Annotated[Path, typer.Option(help="The prepared dataset it was trained on (its train rows are the "
                                            "prompts).")],
    out: Annotated[Path, typer.Option(help="Folder for the RL-trained recommender, train/ (checkpoint, "
                                           "rl_log.csv) and rl.json.")],
    reward: Annotated[str, typer.Option(help="'ranking' (1 for the target + MiniOneRec's rank penalty by beam "
                                             "position when the target is among the beams), 'rule' (1 for the "
                                             "target), 'cf' (a CF model's judgement of each beam, needs --cf), or a "
                                             "'+'-joined mix such as 'ranking+cf'.")] = "ranking",
    cf: Annotated[Path | None, typer.Option(help="A CF model folder (`recalign cf train`) for the cf reward.")] = None,
    cf_reward: Annotated[str, typer.Option(help="The cf reward: 'score' (the CF score of the beam's item) or "
                                                "'rank' (1 / log2(2 + its rank in the CF ranking)).")] = "score",
    cf_weight: Annotated[float, typer.Option(help="Weight of the cf term in a mix.")] = 1.0,
    beams: Annotated[int, typer.Option(help="Group size: constrained beams per prompt (the reference: 16).")] = 16,
    beta: Annotated[float, typer.Option(help="KL penalty (k3 estimator) to the frozen reference model.")] = 1e-3,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (cosine schedule with warm-up).")] = 1e-5,
    epochs: Annotated[int, typer.Option(help="Passes over the training prompts.")] = 1,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimiser steps (the schedule still spans "
                                                       "--epochs; --resume continues).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per optimiser step (the reference: 64).")] = 8,
    micro_batch_size: Annotated[int, typer.Option(help="Prompts per forward pass (each with its group).")] = 2,
    warmup_ratio: Annotated[float, typer.Option(help="Fraction of the steps of linear warm-up.")] = 0.03,
    max_grad_norm: Annotated[float, typer.Option(help="Gradient clipping norm (0: none; the reference: 0.3).")] = 0.3,
    finetune: Annotated[str, typer.Option(help="'lora' (a fresh adapter on the SFT model; the reference model is "
                                               "the adapter disabled) or 'full'.")] = "lora",
    lora_r: Annotated[int, typer.Option(help="LoRA rank (with --finetune lora).")] = 8,
    lora_alpha: Annotated[int, typer.Option(help="LoRA alpha.")] = 16,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated modules LoRA adapts.")] =
        "q_proj,k_proj,v_proj,o_proj",
    sync_ref_every: Annotated[int, typer.Option(help="With --finetune full: the reference's reference-model sync, "
                                                     "ref <- a * policy + (1 - a) * ref every N steps (the "
                                                     "reference: 512; 0: never).")] = 0,
    sync_ref_alpha: Annotated[float, typer.Option(help="a of --sync-ref-every (the reference: 0.6).")] = 0.6,
    reference_target_lookup: Annotated[bool, typer.Option(help="The reference's bug: training rows with the same "
                                                               "prompt all take the last one's target.")] = False,
    max_train_rows: Annotated[int | None, typer.Option(help="Use the first N training rows only.")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints (0: each epoch).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the prompt order and the adapter's initialisation.")] = 42,
    precision: PrecisionOption = "auto",
    eval_split: Annotated[str | None, typer.Option(help="Evaluate on this split after training.")] = "test",
    eval_rows: Annotated[int | None, typer.Option(help="Evaluate only the split's first N rows.")] = 200,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out/train.")] = False,
    overwrite: OverwriteOption = False,
    threads: ThreadsOption = None,
) -> None:
    """Post-train an LLM recommender with GRPO over its constrained beams (every candidate a catalogue item)."""
    set_threads(threads)
    refuse_to_overwrite(out, (RL_RECORD, "train"), overwrite, resume)
    refuse_candidate_model(model)
    quiet_transformers()
    from ..align.rl import RLConfig, rl_prompts, rl_train
    from ..data import CatalogueMismatch
    from ..llm.backbones import LoraSettings
    from ..llm.recommender import LLMRecommender, saved_catalogue
    from ..precision import resolve_precision

    try:
        precision = resolve_precision(precision)
        config = RLConfig(reward=reward, cf_reward=cf_reward, cf_weight=cf_weight, num_beams=beams, beta=beta, lr=lr,
                          epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                          micro_batch_size=micro_batch_size, warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm,
                          precision=precision, seed=seed, finetune=finetune, sync_ref_every=sync_ref_every,
                          sync_ref_alpha=sync_ref_alpha, checkpoint_every=checkpoint_every,
                          reference_target_lookup=reference_target_lookup,
                          lora=LoraSettings(lora_r, lora_alpha, 0.0, tuple(t for t in lora_targets.split(",") if t)))
    except ValueError as exc:
        fail(str(exc))
    if "cf" in reward and cf is None:
        fail("--reward cf needs --cf DIR (a model from `recalign cf train`)")
    dataset = load_dataset_or_fail(data)
    try:
        saved, _ = saved_catalogue(model)
    except (FileNotFoundError, ValueError) as exc:
        fail(f"{model}: {exc}")
    if saved["recommender"]["finetune"] == "frozen":
        fail(f"{model} is a frozen recommender (only an embedding hook trained): RL trains the LLM's weights")
    cf_model = load_cf_or_fail(cf, dataset) if cf is not None else None
    try:  # the catalogue check: the model's items (raw ids, titles) must be the data's
        recommender = LLMRecommender.from_pretrained(model, dataset, merge=True, precision=precision)
    except (FileNotFoundError, CatalogueMismatch, KeyError, ValueError) as exc:
        fail(f"{model}: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    prompts, retargeted = rl_prompts(recommender, dataset, max_train_rows, reference_target_lookup)
    console.print(f"{len(prompts):,} RL prompts from {data} (train), groups of {beams} constrained beams, reward "
                  f"{reward}" + (f"; {retargeted:,} rows took another row's target (--reference-target-lookup)"
                                 if reference_target_lookup else ""))
    try:
        result = rl_train(recommender, prompts, config, out / "train", cf_model, resume)
    except ValueError as exc:  # e.g. --resume with other settings than the interrupted run
        fail(str(exc))
    # saved merged: the reference (the SFT model) plus what RL learnt, loadable on its own
    recommender.config = replace(recommender.config, finetune="full", precision=precision)
    recommender.save_pretrained(out)
    log = result.log
    record = {"sft_model": str(model), "data": str(data), "cf": str(cf) if cf else None, "config": asdict(config),
              "prompts": len(prompts), "retargeted_rows": retargeted, "steps": result.steps,
              "train_seconds": sum(row["seconds"] for row in log),
              "final_reward_mean": log[-1]["reward_mean"] if log else None}
    console.print(f"{result.steps} RL steps; recommender saved in {out}")
    if eval_split:
        from .llm import evaluate_and_report

        trained = LLMRecommender.from_pretrained(out, dataset)
        record["eval"] = evaluate_and_report(trained, dataset, eval_split, tuple(k for k in (1, 5, 10, 20)
                                                                                 if k <= beams),
                                             beams, 8, eval_rows, f"RL on {data} · {eval_split}")
    (out / RL_RECORD).write_text(json.dumps(record, indent=2) + "\n")  # written last: the run is finished
