"""RL post-training of a saved recommender: GRPO whose groups are each prompt's constrained beams
(``recalign.align.grpo``), on accelerate like the SFT loop, with its checkpoints.

Each optimiser step takes ``batch_size`` training prompts (an epoch's order is ``llm.train.epoch_order``, topped up
to whole steps). It first generates: the policy (in eval mode) runs the constrained beam search for every prompt,
and the rewards and group advantages are computed; then it optimises, ``micro_batch_size`` prompts per forward
(each prompt encoded once for its whole group), the reference model's log-probabilities in the same pass structure
without gradients. The loss is the mean over the step's completions of their token-mean GRPO loss.

- ``finetune="lora"``: a fresh LoRA adapter on the SFT model (a LoRA SFT adapter is merged first); the reference
  is the same model with the adapter disabled (peft's ``disable_adapter``), so the weights exist once. The result
  is saved merged, as a fully fine-tuned recommender.
- ``finetune="full"``: every weight trains; the reference is a frozen copy. ``sync_ref_every`` > 0 applies TRL's
  reference sync (ref <- alpha * policy + (1 - alpha) * ref every that many steps; the reference: 512 and 0.6),
  which a disabled adapter cannot follow, hence full only.
- Checkpoints are the SFT loop's (trainable weights, optimiser, schedule, RNG, progress; the synced reference
  beside them) and a resumed run refuses other settings; ``rl_log.csv`` gets one row per step.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..cf.trainer import TrainingDiverged
from ..data import Dataset
from ..decode.beam import BeamConfig, beam_search
from ..llm.backbones import LoraSettings, apply_lora
from ..llm.recommender import LLMRecommender
from ..llm.train import (
    TrainState,
    _allow_precision,
    _append_log,
    _find_checkpoint,
    _load_checkpoint,
    _load_trainable,
    _save_checkpoint,
    _save_trainable,
    _write_log,
    epoch_order,
    param_groups,
)
from ..precision import resolve_precision
from .grpo import (
    CF_REWARDS,
    cf_rewards,
    group_advantages,
    group_log_probs,
    grpo_loss,
    parse_reward,
    rank_penalties,
    rule_rewards,
)

RL_LOG = "rl_log.csv"
RL_LOG_COLUMNS = ("step", "epoch", "loss", "reward_mean", "target_in_group", "kl", "advantage_std", "lr",
                  "completions", "seconds")
RL_RESUME_KEYS = ("epochs", "batch_size", "seed", "lr", "reward", "cf_reward", "cf_weight", "num_beams", "beta",
                  "warmup_ratio", "finetune", "sync_ref_every", "sync_ref_alpha", "reference_target_lookup")
REFERENCE_WEIGHTS = "reference.safetensors"


@dataclass
class RLConfig:
    reward: str = "ranking"  # "rule", "ranking" (rule + rank penalty: the reference's), "cf", or a mix "ranking+cf"
    cf_reward: str = "score"  # the CF term: the candidate's CF "score" or its CF "rank" (1 / log2(rank + 2))
    cf_weight: float = 1.0  # weight of the CF term in a mix
    num_beams: int = 16  # the group: constrained beams per prompt (the reference: 16)
    beta: float = 1e-3  # KL penalty (k3) to the reference model
    lr: float = 1e-5
    epochs: int = 1
    max_steps: int | None = None  # stop (checkpointing first) after this many steps; the schedule spans all epochs
    batch_size: int = 8  # prompts per optimiser step (the reference: 64)
    micro_batch_size: int = 2  # prompts per forward (each with its group)
    warmup_ratio: float = 0.03  # cosine schedule with linear warm-up over this fraction of the steps
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    precision: str = "auto"
    seed: int = 42
    finetune: str = "lora"  # "lora": a fresh adapter, the reference is the adapter disabled; "full": every weight
    sync_ref_every: int = 0  # full only: ref <- alpha * policy + (1 - alpha) * ref every N steps (0: never)
    sync_ref_alpha: float = 0.6
    checkpoint_every: int = 0  # steps between checkpoints; 0 = once per epoch
    log_every: int = 10
    reference_target_lookup: bool = False  # the reference's bug: prompts with identical histories all take the
    # target of the last such training row (its prompt -> target dictionary), rather than each its own
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        parse_reward(self.reward)
        if self.cf_reward not in CF_REWARDS:
            raise ValueError(f"cf_reward is one of {', '.join(CF_REWARDS)}, not {self.cf_reward!r}")
        if self.finetune not in ("lora", "full"):
            raise ValueError(f"finetune is 'lora' or 'full', not {self.finetune!r}")
        if self.sync_ref_every and self.finetune != "full":
            raise ValueError("the reference-model sync needs finetune 'full': with LoRA the reference is the model "
                             "with its adapter disabled, which cannot move")
        if self.num_beams < 2:
            raise ValueError("a group needs at least 2 beams (advantages are relative to the group)")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**{**self.lora, "targets": tuple(self.lora["targets"])})


@dataclass
class RLPrompt:
    prompt_ids: list[int]
    history: tuple[int, ...]
    target: int


@dataclass
class RLResult:
    log: list[dict]
    steps: int


def rl_prompts(recommender: LLMRecommender, dataset: Dataset, max_rows: int | None = None,
               reference_target_lookup: bool = False) -> tuple[list[RLPrompt], int]:
    """One prompt per training row (history -> target: the reference's SidDataset), and how many rows took another
    row's target under ``reference_target_lookup`` (the last row of each prompt wins, as the reference's
    dictionaries do)."""
    frame = dataset.split("train")
    if max_rows is not None:
        frame = frame.iloc[:max_rows]
    prompts = [RLPrompt(recommender.prompt(history), tuple(int(i) for i in history), int(target))
               for history, target in zip(frame["history"], frame["target"])]
    if not reference_target_lookup:
        return prompts, 0
    last = {tuple(p.prompt_ids): p.target for p in prompts}
    changed = sum(last[tuple(p.prompt_ids)] != p.target for p in prompts)
    return [RLPrompt(p.prompt_ids, p.history, last[tuple(p.prompt_ids)]) for p in prompts], changed


def prompts_digest(prompts: Sequence[RLPrompt]) -> str:
    """The prompts' count and a digest of their tokens and targets: a checkpoint is resumed on the same only."""
    digest = hashlib.sha256()
    for p in prompts:
        digest.update(json.dumps([p.prompt_ids, p.target]).encode())
    return f"{len(prompts):,} prompts, digest {digest.hexdigest()[:12]}"


class GroupRewards:
    """Each group's rewards from its beams (trie leaves, best first) and its prompt's target."""

    def __init__(self, recommender: LLMRecommender, config: RLConfig, cf_model=None):
        self.index, self.config = recommender.index, config
        self.parts = parse_reward(config.reward)
        if "cf" in self.parts and cf_model is None:
            raise ValueError("the CF reward needs a CF model")
        if cf_model is not None and cf_model.n_items != recommender.index.n_items:
            raise ValueError(f"the CF model scores {cf_model.n_items} items, the recommender's index holds "
                             f"{recommender.index.n_items}")
        self.cf_model = cf_model

    def __call__(self, groups: Sequence[Sequence[int]], prompts: Sequence[RLPrompt]) -> list[np.ndarray]:
        scores = (self.cf_model.score([np.asarray(p.history, dtype=np.int64) for p in prompts])
                  if "cf" in self.parts else None)
        rewards = []
        for row, (leaves, prompt) in enumerate(zip(groups, prompts)):
            target_leaf = int(self.index.item_leaf[prompt.target])
            reward = np.zeros(len(leaves))
            if "rule" in self.parts or "ranking" in self.parts:
                reward += rule_rewards(leaves, target_leaf)
            if "ranking" in self.parts:
                reward += rank_penalties(leaves, target_leaf)
            if "cf" in self.parts:
                items = [self.index.leaf_items(leaf).numpy() for leaf in leaves]
                reward += self.config.cf_weight * cf_rewards(items, scores[row], self.config.cf_reward)
            rewards.append(reward)
        return rewards


def policy_and_reference(model, config: RLConfig):
    """(policy, reference) for ``config.finetune``; the reference is a context manager factory giving the model
    that computes reference log-probabilities."""
    if config.finetune == "lora":
        model.requires_grad_(False)
        policy = apply_lora(model, config.lora, seed=config.seed)

        def reference():
            return policy.disable_adapter()

        return policy, reference, None
    model.requires_grad_(True)
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return model, nullcontext, frozen


def rl_train(recommender: LLMRecommender, prompts: list[RLPrompt], config: RLConfig, out: str | Path,
             cf_model=None, resume: bool = False, progress: bool = True) -> RLResult:
    """Trains ``recommender.model`` in place (replaced by the policy: with LoRA, a PeftModel around it); see the
    module docstring. ``recommender`` must come merged (``from_pretrained(merge=True)``)."""
    from transformers import get_cosine_schedule_with_warmup

    out = Path(out)
    if not prompts:
        raise ValueError("no training prompts")
    if hasattr(recommender.model, "peft_config"):
        raise ValueError("RL takes a merged recommender (LLMRecommender.from_pretrained(..., merge=True)): a LoRA "
                         "adapter left unmerged would be trained under a second one")
    precision = resolve_precision(config.precision)
    rewards_of = GroupRewards(recommender, config, cf_model)
    mixed_precision = "bf16" if precision == "bf16" else "no"
    _allow_precision(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    if accelerator.num_processes > 1:
        raise ValueError("RL runs as one process (each process would need its own share of the prompts)")
    set_seed(config.seed)
    policy, reference_context, frozen = policy_and_reference(recommender.model, config)
    recommender.model = policy
    steps_per_epoch = math.ceil(len(prompts) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    optimiser = torch.optim.AdamW(param_groups(policy, config.weight_decay), lr=config.lr)
    scheduler = get_cosine_schedule_with_warmup(optimiser, math.ceil(config.warmup_ratio * total_steps), total_steps)
    prepared, optimiser, scheduler = accelerator.prepare(policy, optimiser, scheduler)
    moving = frozen if config.sync_ref_every else None  # a reference that never moves needs no checkpoint
    accelerator.register_save_state_pre_hook(partial(_save_with_reference, policy, moving))
    accelerator.register_load_state_pre_hook(partial(_load_with_reference, policy, moving))
    beams = BeamConfig(num_beams=config.num_beams, batch_size=config.micro_batch_size,
                       length_penalty=0.0 if recommender.template.target_suffix else 1.0)  # as `llm eval` decodes

    state = TrainState()
    checkpoint = _find_checkpoint(out) if resume else None
    digest = prompts_digest(prompts)
    if checkpoint is not None:
        state = _load_checkpoint(accelerator, checkpoint, config, digest, RL_RESUME_KEYS)
    out.mkdir(parents=True, exist_ok=True)
    _write_log(out / RL_LOG, state.log, RL_LOG_COLUMNS)
    stop_at = min(total_steps, config.max_steps if config.max_steps is not None else total_steps)
    bar = tqdm(total=stop_at, initial=state.global_step, desc="rl", disable=not progress)
    for epoch in range(state.epoch, config.epochs):
        if state.global_step >= stop_at:
            break
        order = epoch_order(len(prompts), config.batch_size, config.seed, epoch).view(-1, config.batch_size)
        for step in range(state.step_in_epoch, steps_per_epoch):
            started = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            row = _step(recommender, prepared, reference_context, frozen, [prompts[i] for i in order[step].tolist()],
                        rewards_of, beams, config, accelerator)
            if not math.isfinite(row["loss"]):
                raise TrainingDiverged(f"RL step {state.global_step + 1}: the loss is {row['loss']}; the last "
                                       f"checkpoint in {out} is from before it (lower --lr?)")
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)
            state.global_step += 1
            state.step_in_epoch = step + 1
            if config.sync_ref_every and state.global_step % config.sync_ref_every == 0:
                _sync_reference(frozen, policy, config.sync_ref_alpha)
            row = {"step": state.global_step, "epoch": epoch + 1, **row, "lr": lr,
                   "seconds": round(time.perf_counter() - started, 4)}
            state.log.append(row)
            _append_log(out / RL_LOG, row, RL_LOG_COLUMNS)
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.2g}")
            if progress and config.log_every and state.global_step % config.log_every == 0:
                recent = state.log[-config.log_every:]
                tqdm.write(f"step {state.global_step}: reward {np.mean([r['reward_mean'] for r in recent]):.4f} "
                           f"target in group {np.mean([r['target_in_group'] for r in recent]):.3f} "
                           f"KL {np.mean([r['kl'] for r in recent]):.3g} lr {lr:.3g}")
            if state.step_in_epoch == steps_per_epoch:
                state.epoch, state.step_in_epoch = epoch + 1, 0
            if (state.global_step >= stop_at or (state.step_in_epoch == 0 and not config.checkpoint_every)
                    or (config.checkpoint_every and state.global_step % config.checkpoint_every == 0)):
                _save_checkpoint(accelerator, out, state, config, digest)
            if state.global_step >= stop_at:
                break
    bar.close()
    policy.eval()
    return RLResult(log=state.log, steps=state.global_step)


def _step(recommender: LLMRecommender, policy, reference_context, frozen, prompts: list[RLPrompt],
          rewards_of: GroupRewards, beams: BeamConfig, config: RLConfig, accelerator: Accelerator) -> dict:
    """One step's generation, rewards and backward passes (the caller steps the optimiser); its log values."""
    model = accelerator.unwrap_model(policy)
    histories = [p.history for p in prompts]
    hook = recommender.embedding_hook
    model.eval()
    ranked = beam_search(model, [p.prompt_ids for p in prompts], recommender.index, beams, recommender.pad_id,
                         hook, histories)
    groups = [r.leaves for r in ranked]
    rewards = rewards_of(groups, prompts)
    advantages = [group_advantages(torch.tensor(r, dtype=torch.float32).unsqueeze(0))[0] for r in rewards]
    completions = [[recommender.index.tokens(int(recommender.index.leaf_items(leaf)[0])) for leaf in group]
                   for group in groups]
    n_completions = sum(map(len, groups))
    model.train()
    loss_sum, kl_sum = 0.0, 0.0
    for start in range(0, len(prompts), config.micro_batch_size):
        part = slice(start, start + config.micro_batch_size)
        args = ([p.prompt_ids for p in prompts[part]], completions[part], recommender.pad_id, hook, histories[part])
        with accelerator.autocast():
            log_probs, mask = group_log_probs(model, *args)
            with torch.no_grad(), reference_context():
                ref_log_probs, _ = group_log_probs(frozen if frozen is not None else model, *args)
        advantage = torch.cat(advantages[part]).to(log_probs.device)
        losses, kls = grpo_loss(log_probs, ref_log_probs, advantage, mask, config.beta)
        accelerator.backward(losses.sum() / n_completions)
        loss_sum += float(losses.detach().sum())
        kl_sum += float(kls.sum())
    all_rewards = np.concatenate(rewards)
    return {"loss": loss_sum / n_completions, "reward_mean": float(all_rewards.mean()),
            "target_in_group": float(np.mean([int(recommender.index.item_leaf[p.target]) in g
                                              for p, g in zip(prompts, groups)])),
            "kl": kl_sum / n_completions, "advantage_std": float(torch.cat(advantages).std()),
            "completions": n_completions}


@torch.no_grad()
def _sync_reference(reference, policy, alpha: float) -> None:
    """TRL's SyncRefModelCallback: ref <- alpha * policy + (1 - alpha) * ref."""
    for ref_parameter, parameter in zip(reference.parameters(), policy.parameters()):
        ref_parameter.mul_(1 - alpha).add_(parameter.detach(), alpha=alpha)


def _save_with_reference(policy, frozen, models: list, weights: list[dict], output_dir: str) -> None:
    """The trainable weights (the SFT loop's hook) and, when it can move (sync), the reference's."""
    _save_trainable(policy, models, weights, output_dir)
    if frozen is not None:
        save_file({n: p.detach().contiguous() for n, p in frozen.named_parameters()},
                  str(Path(output_dir) / REFERENCE_WEIGHTS))


def _load_with_reference(policy, frozen, models: list, input_dir: str) -> None:
    _load_trainable(policy, models, input_dir)
    if frozen is not None and (Path(input_dir) / REFERENCE_WEIGHTS).exists():
        frozen.load_state_dict(load_file(str(Path(input_dir) / REFERENCE_WEIGHTS)), strict=False)
