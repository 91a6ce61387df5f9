"""Supervised fine-tuning of the LLM recommender: the prompt in, the target item's identifier (plus EOS) out.

The loop is plain accelerate, so ``accelerate launch`` runs it unchanged on one process, DDP, FSDP or DeepSpeed:

- **The LM head runs only at label positions.** ``LabelPositionLM`` runs the decoder, gathers the hidden states
  whose *next* token is a trained label and projects only those onto the vocabulary: an (n_labels, vocab) float32
  tensor instead of batch x length x vocab. Loss hooks (TCA4Rec's soft labels, ``LossHook``) get these logits and a
  ``LabelBatch`` describing every label, and return one loss per label.
- **Global token-level mean.** A step's loss is the sum of its label losses over the whole global batch (every
  process, every accumulation micro-batch) divided by its label count. The count is known before the step: every
  process derives the epoch's order from the same seed, so it adds up the label counts of the step's rows. Each
  micro-batch's backward gets ``sum(its label losses) * accumulation * processes / step label count``: accelerate
  divides by the accumulation steps and DDP (FSDP, DeepSpeed alike) averages over processes, which leaves exactly
  the gradient of the global mean. One process or two, any micro-batch size: the same steps.
- **Data order.** Each epoch is a ``torch.randperm`` seeded with ``seed + epoch``; its last step is topped up
  with rows from the start of that order, so every step has ``batch_size`` rows. Rows are cut into global
  micro-batches of ``micro_batch_size * processes`` and split between processes (``split_batches``).
- **Input-embedding hook.** ``EmbeddingHook`` (e.g. CF features at placeholder tokens, ``recalign.align.features``)
  rewrites the input embeddings before the decoder runs; it is a submodule of ``LabelPositionLM``, so the
  optimiser, DDP and the checkpoints see its trainable weights.
- **Checkpoints.** ``accelerator.save_state`` (the trainable weights only: with LoRA, megabytes rather than the
  whole LLM, except under FSDP; optimiser, schedule, every process's RNG) plus ``progress.json``, written to a
  temporary folder and swapped in, so an interruption never leaves half a checkpoint. ``resume=True`` reloads it
  and skips the steps of the epoch already done: the run ends with the same weights and log as an uninterrupted
  one.
- **FSDP** (version 2). FSDP shards the module it is given in place, so it gets a copy sharing the model's storage,
  which waits on the CPU meanwhile; each process checkpoints its shards (accelerate's sharded state, frozen weights
  included), and at the end the trained weights are gathered into ``model`` on every process, which then moves to
  the device: the caller gets a whole model where DDP would leave it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration, skip_first_batches
from accelerate.utils import DistributedType, fsdp2_canonicalize_names, set_seed
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..cf.trainer import TrainingDiverged
from ..precision import resolve_precision
from .backbones import enable_activation_checkpointing, unwrap_causal_lm
from .hooks import EmbeddingHook, hooked_embeddings

CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"
LOG = "train_log.csv"
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "labels", "tokens", "seconds", "tokens_per_second")
# A resumed run must see the same data order and schedule as the interrupted one.
RESUME_KEYS = ("epochs", "batch_size", "seed", "warmup_steps", "lr")


@dataclass(frozen=True)
class TargetSpan:
    """One trained item inside a row's target tokens (a sequence row holds several, one after another)."""

    start: int  # its first token in ``target_ids``
    length: int  # its identifier's tokens, EOS included
    item: int  # its item id (-1: not an item of the index, e.g. a title of an auxiliary task)
    history: tuple[int, ...]  # the items before it (what a CF model scores for it)


@dataclass
class SFTExample:
    prompt_ids: list[int]  # the prompt, ending where the (first) identifier starts
    target_ids: list[int]  # the target item's identifier tokens, EOS included (a sequence row: several items')
    item: int = -1  # target item id (for loss hooks such as TCA4Rec's soft labels)
    history: tuple[int, ...] = ()  # history item ids (for loss hooks that score with a CF model)
    label_mask: list[bool] | None = None  # which target tokens are trained; None = all (identifier + EOS)
    spans: tuple[TargetSpan, ...] = ()  # a sequence row's items in target_ids; () = one, the whole target

    def label_count(self) -> int:
        return len(self.target_ids) if self.label_mask is None else sum(map(bool, self.label_mask))

    def target_spans(self) -> tuple[TargetSpan, ...]:
        return self.spans or (TargetSpan(0, len(self.target_ids), self.item, tuple(self.history)),)


@dataclass
class LabelBatch:
    """A micro-batch and its n trained labels (flattened over rows). A label's *target* is the item whose
    identifier it belongs to: one per row for row examples, several per sequence row; loss hooks index the
    per-target ``items`` and ``histories`` with ``label_example``."""

    input_ids: torch.Tensor  # (rows, length): prompt + target, pad_id after
    attention_mask: torch.Tensor | None  # (rows, length); None when packed: position_ids then separate the rows
    position_ids: torch.Tensor  # (rows, length): positions within each example, restarting for packed ones
    label_rows: torch.Tensor  # (n,) row of the position that predicts each label
    label_cols: torch.Tensor  # (n,) column of that position: the label is input_ids[row, col + 1]
    label_tokens: torch.Tensor  # (n,)
    label_depth: torch.Tensor  # (n,) index of the label within its identifier, 0-based
    label_example: torch.Tensor  # (n,) the label's target: index into items and histories
    items: torch.Tensor  # (targets,) target item ids
    histories: list[tuple[int, ...]]  # per target: the items before it
    row_histories: list[tuple[int, ...]]  # per row: the history its prompt writes (what embedding hooks read)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LabelBatch:
        """Lets accelerate's data loader place the batch like a tensor."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


def training_rows_summary(examples: Sequence[SFTExample]) -> str:
    """How many rows train how many item targets (a sequence row trains several) and tokens."""
    targets = sum(span.item >= 0 for e in examples for span in e.target_spans())
    return (f"{len(examples):,} training rows, {targets:,} item targets, "
            f"{sum(e.label_count() for e in examples):,} trained tokens")


LossHook = Callable[[torch.Tensor, LabelBatch], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
    """The default hook: per-label cross-entropy against the label tokens."""
    return F.cross_entropy(logits, batch.label_tokens, reduction="none")


@dataclass
class SFTConfig:
    epochs: int = 1
    batch_size: int = 16  # global rows per optimiser step (over all processes and accumulation steps)
    micro_batch_size: int = 4  # rows per forward per process
    lr: float = 2e-4
    weight_decay: float = 0.01  # not on biases / norm weights
    warmup_steps: int = 20  # linear warm-up then linear decay to 0 over the real number of optimiser steps
    max_grad_norm: float = 1.0  # 0 = no clipping
    precision: str = "auto"  # "bf16" (autocast via accelerate mixed_precision), "fp32", or "auto": bf16 where the
    # hardware computes it natively (recalign.precision)
    seed: int = 42
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = once per epoch
    log_every: int = 10  # optimiser steps between console lines (the CSV gets every step)
    max_steps: int | None = None  # stop (checkpointing first) after this many optimiser steps; the schedule still
    # spans all epochs, so a run stopped here and resumed ends exactly like an uninterrupted one
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: far less memory, ~1/3
    # more compute
    pack_length: int = 0  # > 0: pack a micro-batch's examples into rows of at most this many tokens (see collate)
    optimizer: str = "adamw"  # "adamw" (eps 1e-6) or "adam" (betas 0.9/0.98, eps 1e-8: A-LLMRec's stage 2)
    schedule: str = "linear"  # "linear" (warm-up, then decay to 0) or "constant" (A-LLMRec's stage 2)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "adam") or self.schedule not in ("linear", "constant"):
            raise ValueError(f"optimizer is 'adamw' or 'adam' and schedule 'linear' or 'constant', not "
                             f"{self.optimizer!r} and {self.schedule!r}")


@dataclass
class SFTResult:
    log: list[dict]  # one row per optimiser step, resumed-over steps included (LOG_COLUMNS)
    steps: int  # optimiser steps done in total
    tokens_per_second: float  # of the steps this call ran


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0
    log: list[dict] = field(default_factory=list)


def collate(examples: Sequence[SFTExample], pad_id: int = 0, pack_length: int = 0) -> LabelBatch:
    """Right-pads prompt + target and lists the positions whose next token is a trained target token.

    ``pack_length`` > 0 packs several examples into one row of at most that many tokens (first fit, longest
    first; a longer example gets a row of its own): position ids restart at each example and the attention mask
    is left out, so transformers keeps attention within each example (its packed-sequence masks)."""
    sequences = [list(e.prompt_ids) + list(e.target_ids) for e in examples]
    placed = _pack(list(map(len, sequences)), pack_length) if pack_length else [(i, 0) for i in range(len(examples))]
    n_rows = 1 + max(row for row, _ in placed)
    length = max(offset + len(seq) for (_, offset), seq in zip(placed, sequences))
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    position_ids = torch.zeros_like(input_ids)
    rows, cols, tokens, depth, owner, items, histories = [], [], [], [], [], [], []
    row_histories: list[tuple[int, ...]] = [()] * n_rows
    for (row, offset), example, sequence in zip(placed, examples, sequences):
        if not example.prompt_ids:
            raise ValueError("an empty prompt leaves nothing to predict the first target token from")
        mask = [True] * len(example.target_ids) if example.label_mask is None else example.label_mask
        if len(mask) != len(example.target_ids):
            raise ValueError(f"label_mask has {len(mask)} entries for {len(example.target_ids)} target tokens")
        input_ids[row, offset:offset + len(sequence)] = torch.tensor(sequence)
        attention_mask[row, offset:offset + len(sequence)] = 1
        position_ids[row, offset:offset + len(sequence)] = torch.arange(len(sequence))
        row_histories[row] = tuple(example.history)
        start = offset + len(example.prompt_ids) - 1  # predicts target_ids[0]
        for span in example.target_spans():
            for d in range(span.length):
                if mask[span.start + d]:
                    rows.append(row)
                    cols.append(start + span.start + d)
                    tokens.append(example.target_ids[span.start + d])
                    depth.append(d)
                    owner.append(len(items))
            items.append(span.item)
            histories.append(tuple(span.history))
    if pack_length:  # the padding after each row's last example: its own run of positions, attended by nothing
        for row in range(n_rows):
            pad = int((attention_mask[row] == 0).sum())
            position_ids[row, length - pad:] = torch.arange(pad)
    return LabelBatch(
        input_ids=input_ids, attention_mask=None if pack_length else attention_mask, position_ids=position_ids,
        label_rows=torch.tensor(rows, dtype=torch.long), label_cols=torch.tensor(cols, dtype=torch.long),
        label_tokens=torch.tensor(tokens, dtype=torch.long), label_depth=torch.tensor(depth, dtype=torch.long),
        label_example=torch.tensor(owner, dtype=torch.long), items=torch.tensor(items, dtype=torch.long),
        histories=histories, row_histories=row_histories)


def _pack(lengths: list[int], pack_length: int) -> list[tuple[int, int]]:
    """(row, offset) of each example: first fit over the examples, longest first."""
    used: list[int] = []  # tokens taken in each row
    placed = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, taken in enumerate(used) if taken + lengths[i] <= pack_length), None)
        if row is None:
            row = len(used)
            used.append(0)
        placed[i] = (row, used[row])
        used[row] += lengths[i]
    return placed


class LabelPositionLM(nn.Module):
    """A causal LM (or a PeftModel around one) that returns float32 logits at the label positions only.

    The model is a registered submodule, so DDP/FSDP and the optimiser see all its parameters; LoRA layers are
    injected in place, so running the base model's decoder and head applies them. Methods that act in
    ``PeftModel.forward`` itself (prompt or prefix tuning) would be bypassed, hence refused.

    With an ``embedding_hook`` (also a registered submodule: its trainable weights are optimised and
    checkpointed with the model's), the decoder reads ``hook(get_input_embeddings()(input_ids), input_ids,
    histories)`` as ``inputs_embeds`` instead of the ids.
    """

    def __init__(self, model: nn.Module, embedding_hook: EmbeddingHook | None = None):
        super().__init__()
        if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
            raise ValueError("prompt-learning PEFT methods act in PeftModel.forward, which this wrapper bypasses")
        causal_lm = unwrap_causal_lm(model)  # fails early on a model without a decoder and an output head
        self.model = model
        self.embedding_hook = embedding_hook
        # FSDP's transformer auto-wrap shards each of these layers on its own (transformers names them per model)
        self._no_split_modules = list(getattr(causal_lm, "_no_split_modules", None) or [])

    def train(self, mode: bool = True) -> LabelPositionLM:
        """A frozen model (no trainable weight: only the hook learns, e.g. A-LLMRec's projectors) stays in eval
        mode, its dropout off."""
        super().train(mode)
        if not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                label_rows: torch.Tensor, label_cols: torch.Tensor,
                histories: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        causal_lm = unwrap_causal_lm(self.model)
        if self.embedding_hook is None:
            inputs = {"input_ids": input_ids}
        else:
            inputs = {"inputs_embeds": hooked_embeddings(causal_lm, input_ids, self.embedding_hook, histories)}
        hidden = causal_lm.model(**inputs, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).last_hidden_state
        return causal_lm.get_output_embeddings()(hidden[label_rows, label_cols]).float()


def accumulation_steps(config: SFTConfig, num_processes: int) -> int:
    rows_per_micro_step = config.micro_batch_size * num_processes
    if config.batch_size % rows_per_micro_step:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size "
                         f"{config.micro_batch_size} x {num_processes} processes")
    return config.batch_size // rows_per_micro_step


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's row order, cycled to a whole number of steps (the last step reuses the epoch's first rows)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    length = math.ceil(n / batch_size) * batch_size
    return order.repeat(math.ceil(length / n))[:length]


def linear_schedule(step: int, warmup: int, total: int) -> float:
    """transformers' get_linear_schedule_with_warmup, the reference's schedule."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    # Matrices decay; vectors (biases, norm weights) do not, nor token rows trained on their own (peft's trainable
    # tokens hold the rows themselves, which decay would pull towards zero).
    decays = [not (p.ndim < 2 or "trainable_tokens" in n) for n, p in named]
    return [{"params": [p for (_, p), d in zip(named, decays) if d], "weight_decay": weight_decay},
            {"params": [p for (_, p), d in zip(named, decays) if not d], "weight_decay": 0.0}]


def launch_state():
    """accelerate's process state, set up as an Accelerator would (``ACCELERATE_USE_CPU`` included): a single
    process unless started by ``accelerate launch``. Call it rather than a bare ``PartialState()``, which on a
    machine without GPUs would take a CPU launch for a single process."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _allow_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision. A single
    process (a notebook, the demo, a test session) may train in fp32 and then in bf16, so its state is reset; a
    launched multi-process run keeps its state, whose precision comes from the launch configuration."""
    from accelerate.state import AcceleratorState, PartialState

    if not AcceleratorState._shared_state or PartialState().num_processes > 1:
        return
    if AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def sft_train(model: nn.Module, examples: list[SFTExample], config: SFTConfig, out: str | Path,
              loss_hook: LossHook | None = None, resume: bool = False, progress: bool = True,
              pad_id: int = 0, embedding_hook: EmbeddingHook | None = None) -> SFTResult:
    """Fine-tunes ``model`` in place (its trainable parameters) on ``examples``; see the module docstring.

    ``embedding_hook`` rewrites the input embeddings (``EmbeddingHook``); its trainable weights train with the
    model's and are trained in place too."""
    out = Path(out)
    precision = resolve_precision(config.precision)
    if not examples:
        raise ValueError("no training examples")
    if config.pack_length and embedding_hook is not None:
        raise ValueError("packing puts several examples in one row, and an embedding hook reads one history per "
                         "row: train with pack_length 0")
    loss_hook = loss_hook or cross_entropy_loss
    mixed_precision = "bf16" if precision == "bf16" else "no"
    _allow_precision(mixed_precision)
    accelerator = Accelerator(mixed_precision=mixed_precision,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    # The accumulation depends on the process count, known only once the accelerator exists.
    accum = accumulation_steps(config, accelerator.num_processes)
    accelerator.gradient_accumulation_steps = accum
    set_seed(config.seed)  # dropout (LoRA) draws from the global generators; checkpoints carry their states
    labels = torch.tensor([e.label_count() for e in examples])
    tokens = torch.tensor([len(e.prompt_ids) + len(e.target_ids) for e in examples])
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch

    if config.gradient_checkpointing:
        # non-reentrant: gradients reach LoRA weights even though the frozen embeddings' outputs need none
        enable_activation_checkpointing(unwrap_causal_lm(model))
    trained = LabelPositionLM(model, embedding_hook)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if sharded:
        _configure_fsdp(accelerator)
        trained.to("cpu")  # the whole model waits in host memory while its shards train
    lm = _shardable_copy(trained) if sharded else trained
    if config.optimizer == "adam":
        optimiser = torch.optim.Adam(param_groups(lm, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-8)
    else:
        optimiser = torch.optim.AdamW(param_groups(lm, config.weight_decay), lr=config.lr, eps=1e-6)
    schedule = (partial(linear_schedule, warmup=config.warmup_steps, total=total_steps)
                if config.schedule == "linear" else lambda step: 1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    lm, optimiser, scheduler = accelerator.prepare(lm, optimiser, scheduler)
    if accelerator.gradient_accumulation_steps != accum:
        raise ValueError(f"the launch configuration (DeepSpeed?) set {accelerator.gradient_accumulation_steps} "
                         f"accumulation steps; batch_size {config.batch_size} needs {accum}")
    state_hooks = (accelerator.register_save_state_pre_hook(partial(_save_trainable, accelerator.unwrap_model(lm))),
                   accelerator.register_load_state_pre_hook(partial(_load_trainable, accelerator.unwrap_model(lm))))

    show = progress and accelerator.is_main_process
    state = TrainState()
    checkpoint = _find_checkpoint(out) if resume else None
    if checkpoint is not None:
        state = _load_checkpoint(accelerator, checkpoint, config, examples_digest(examples))
        if show:
            tqdm.write(f"resuming after step {state.global_step} (epoch {state.epoch + 1})")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        _write_log(out / LOG, state.log)  # rows written after the checkpoint go with it
    stop_at = min(total_steps, config.max_steps if config.max_steps is not None else total_steps)
    bar = tqdm(total=stop_at, initial=state.global_step, desc="sft", disable=not show)
    run_tokens, run_seconds = 0, 0.0
    lm.train()
    for epoch in range(state.epoch, config.epochs):
        if state.global_step >= stop_at:
            break
        order = epoch_order(len(examples), config.batch_size, config.seed, epoch)
        step_labels = labels[order].view(-1, config.batch_size).sum(1).tolist()
        step_tokens = tokens[order].view(-1, config.batch_size).sum(1).tolist()
        # Its own generator keeps the loader from drawing a seed from the global RNG (dropout's) at each epoch.
        loader = accelerator.prepare_data_loader(DataLoader(
            [examples[i] for i in order.tolist()], batch_size=config.micro_batch_size * accelerator.num_processes,
            collate_fn=partial(collate, pad_id=pad_id, pack_length=config.pack_length), generator=torch.Generator()))
        skip = state.step_in_epoch * accum
        if skip:
            loader = skip_first_batches(loader, skip)
        label_loss = torch.zeros((), device=accelerator.device)
        started = time.perf_counter()
        for micro_step, batch in enumerate(loader, start=skip):
            step = micro_step // accum
            with accelerator.accumulate(lm):
                # accelerate wraps a model's forward in autocast when it prepares it, but FSDP2 models are not
                # wrapped: float32 inputs of bf16 weights (an embedding hook's CF features) need it all the same
                with accelerator.autocast() if sharded else nullcontext():
                    logits = lm(batch.input_ids, batch.attention_mask, batch.position_ids, batch.label_rows,
                                batch.label_cols, batch.row_histories)
                losses = loss_hook(logits, batch)
                if losses.shape != batch.label_tokens.shape:
                    raise ValueError(f"the loss hook returned shape {tuple(losses.shape)}, not one loss per label")
                # Undoes accelerate's 1/accum and DDP's 1/processes: the gradient is that of the global mean.
                scale = accum * accelerator.num_processes / max(1, step_labels[step])
                accelerator.backward(losses.sum() * scale)
                label_loss += losses.detach().sum()
                if accelerator.sync_gradients:
                    if config.max_grad_norm:
                        accelerator.clip_grad_norm_(lm.parameters(), config.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]
                    optimiser.step()
                    scheduler.step()
                    optimiser.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue

            loss = accelerator.reduce(label_loss, "sum").item() / max(1, step_labels[step])
            if not math.isfinite(loss):  # every process sees the same reduced loss, so all stop together
                raise TrainingDiverged(f"optimiser step {state.global_step + 1} (epoch {epoch + 1}): the loss is "
                                       f"{loss}; the last checkpoint in {out} is from before it (lower --lr?)")
            label_loss.zero_()
            seconds = time.perf_counter() - started
            state.global_step += 1
            state.step_in_epoch = step + 1
            row = {"step": state.global_step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                   "labels": step_labels[step], "tokens": step_tokens[step], "seconds": round(seconds, 4),
                   "tokens_per_second": round(step_tokens[step] / max(seconds, 1e-9), 1)}
            state.log.append(row)
            run_tokens, run_seconds = run_tokens + step_tokens[step], run_seconds + seconds
            if accelerator.is_main_process:
                _append_log(out / LOG, row)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if show and config.log_every and state.global_step % config.log_every == 0:
                recent = state.log[-config.log_every:]
                mean = sum(r["loss"] * r["labels"] for r in recent) / max(1, sum(r["labels"] for r in recent))
                tqdm.write(f"step {state.global_step}: loss {mean:.4f} lr {lr:.3g} "
                           f"{sum(r['tokens'] for r in recent) / sum(r['seconds'] for r in recent):.0f} tokens/s")
            if state.step_in_epoch == steps_per_epoch:
                state.epoch, state.step_in_epoch = epoch + 1, 0
            if (state.global_step >= stop_at or (state.step_in_epoch == 0 and not config.checkpoint_every)
                    or (config.checkpoint_every and state.global_step % config.checkpoint_every == 0)):
                _save_checkpoint(accelerator, out, state, config, examples_digest(examples))
            if state.global_step >= stop_at:
                break
            started = time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    if sharded:
        _gather_trained_weights(accelerator.unwrap_model(lm, keep_torch_compile=False), trained)
        # the last references to the shards and optimiser states, freed before the whole model takes the device
        for handle in state_hooks:
            handle.remove()
        del lm, optimiser, scheduler
        accelerator.free_memory()
        trained.to(accelerator.device)  # where DDP leaves it, for decoding (model selection) on the device
    # DDP and DeepSpeed wrap without copying: ``trained`` is ``model`` (and the hook), now with the trained weights.
    trained.eval()
    return SFTResult(log=state.log, steps=state.global_step,
                     tokens_per_second=run_tokens / run_seconds if run_seconds else 0.0)


def _shardable_copy(module: nn.Module) -> nn.Module:
    """A copy for FSDP to shard. FSDP turns the parameters of the module it is given into shards on the device, in
    place; its copy shares the original's storage (new parameter objects around the same tensors, ties kept), so
    the caller's model stays whole and receives the trained weights afterwards."""
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()}
    memo |= {id(b): b.detach() for b in module.buffers()}
    return copy.deepcopy(module, memo)


def _configure_fsdp(accelerator: Accelerator) -> None:
    """Refuses FSDP settings the gathering cannot honour, and keeps the label logits in float32."""
    plugin = accelerator.state.fsdp_plugin
    if not accelerator.is_fsdp2:
        raise ValueError("FSDP takes fsdp_version 2 here (FSDP1 flattens the parameters, so the trained weights "
                         "cannot be gathered by name): see recipes/accelerate/fsdp.yaml")
    if plugin.cpu_ram_efficient_loading:
        raise ValueError("fsdp_cpu_ram_efficient_loading gives only the first process real weights, but every "
                         "process keeps the whole model (it decodes after training): set it to false")
    if plugin.mixed_precision_policy is not None:
        # accelerate casts every sharded module's output to bf16, the float32 label logits included: the loss (its
        # log-sum-exp over the vocabulary, TCA's soft labels) would then be computed in bf16
        plugin.mixed_precision_policy = replace(plugin.mixed_precision_policy, output_dtype=None)


@torch.no_grad()
def _gather_trained_weights(sharded: nn.Module, whole: nn.Module) -> None:
    """Copies the trained parameters of the FSDP copy into the whole module, one all-gather per parameter (every
    process takes part, in the same order, and ends with the full weights; frozen ones never changed)."""
    from torch.distributed.tensor import DTensor  # torch.distributed loads only for sharded runs

    targets = dict(whole.named_parameters())
    # activation checkpointing and torch.compile add segments to the copy's names
    for name, parameter in fsdp2_canonicalize_names(dict(sharded.named_parameters())).items():
        if parameter.requires_grad:
            full = parameter.full_tensor() if isinstance(parameter, DTensor) else parameter
            targets[name].copy_(full)


def _save_trainable(module: nn.Module, models: list, weights: list[dict], output_dir: str) -> None:
    """save_state hook for the plain (non-sharded) state: the trainable weights only, under unwrapped names.

    Frozen weights never change, so a LoRA checkpoint holds megabytes rather than the LLM; the unwrapped names
    make one written under DDP load on one process and vice versa. Sharded backends (FSDP, DeepSpeed) save their
    own, whole state.
    """
    if weights:
        weights[:] = [{name: p.detach().contiguous() for name, p in module.named_parameters() if p.requires_grad}]


def _load_trainable(module: nn.Module, models: list, input_dir: str) -> None:
    """load_state hook, the counterpart of _save_trainable: loads the weights itself, checking every one is there."""
    if not models:  # sharded backends load their own state
        return
    with safe_open(Path(input_dir) / "model.safetensors", "pt", device="cpu") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    try:
        _, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another LoRA rank, another model size
        raise ValueError(f"{input_dir} does not hold this model's trainable weights (another size: "
                         f"{str(exc).splitlines()[-1].strip()})") from None
    if unexpected or trainable - tensors.keys():
        raise ValueError(f"{input_dir} does not hold this model's trainable weights: a different model or adapter?")
    models.clear()  # loaded: accelerate must not load them again


def _find_checkpoint(out: Path) -> Path | None:
    # ``.old`` survives only an interruption between the two renames of _save_checkpoint.
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        if (out / name / PROGRESS).exists():
            return out / name
    return None


def examples_digest(examples: Sequence[SFTExample]) -> str:
    """The training rows' count and a digest of their tokens: another --data, --max-train-rows, prompt, backbone or
    task mix gives other rows, which a checkpoint must not be resumed on."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.prompt_ids, example.target_ids, example.label_mask, example.item]).encode())
    return f"{len(examples):,} rows, digest {digest.hexdigest()[:12]}"


def _save_checkpoint(accelerator: Accelerator, out: Path, state: TrainState, config: SFTConfig,
                     examples: str | None = None) -> None:
    """Written to a temporary folder and swapped in, so an interruption never leaves half a checkpoint."""
    tmp, old, final = out / (CHECKPOINT + ".tmp"), out / (CHECKPOINT + ".old"), out / CHECKPOINT
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)  # every process: each writes its RNG state (and its shards, when sharded)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / PROGRESS).write_text(json.dumps({"state": asdict(state), "config": asdict(config),
                                                "examples": examples}))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)  # left by an interruption during the removal below
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(accelerator: Accelerator, directory: Path, config, examples: str | None = None,
                     keys: tuple[str, ...] = RESUME_KEYS) -> TrainState:
    try:
        saved = json.loads((directory / PROGRESS).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot resume from {directory / PROGRESS}: the file is damaged ({exc})") from exc
    changed = [f"{k} {saved['config'].get(k)!r} (now {getattr(config, k)!r})" for k in keys
               if saved["config"].get(k) != getattr(config, k)]
    if saved.get("examples", examples) != examples:  # checkpoints of earlier versions recorded no examples
        changed.append(f"training examples {saved['examples']} (now {examples})")
    if changed:
        raise ValueError(f"cannot resume {directory}: {'; '.join(changed)} differ from the interrupted run")
    written_sharded = any(directory.glob("pytorch_model_fsdp*"))  # accelerate's names for FSDP model states
    if written_sharded != (accelerator.distributed_type == DistributedType.FSDP):
        raise ValueError(f"cannot resume {directory}: it was written {'under' if written_sharded else 'without'} "
                         "FSDP, and FSDP's sharded checkpoints and the others do not load into each other")
    try:
        accelerator.load_state(directory)
    except ValueError:
        raise
    except Exception as exc:  # torch.load and safetensors raise many kinds (EOFError, RuntimeError, their own)
        raise ValueError(f"cannot resume from {directory}: a checkpoint file is damaged or truncated "
                         f"({type(exc).__name__}: {exc})") from exc
    return TrainState(**saved["state"])


def _write_log(path: Path, log: list[dict], columns: tuple[str, ...] = LOG_COLUMNS) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(log)


def _append_log(path: Path, row: dict, columns: tuple[str, ...] = LOG_COLUMNS) -> None:
    # One row per step: rewriting the whole file each step would be quadratic over a long run.
    with open(path, "a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=columns).writerow(row)
