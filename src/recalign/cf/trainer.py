"""Training a CF model: seeded, early-stopped on validation NDCG@10, checkpointed each epoch, resumable.

Every train example becomes one row, its history followed by its target, left-padded to ``max_len + 1``.
Models trained at every position thereby learn from each prefix of each row (the sequence augmentation);
``positions="last"`` trains on the target alone, as the TCA4Rec backbone does.

Determinism: shuffling and negative sampling draw from one ``torch.Generator`` and dropout from torch's
global generator; both states, the optimiser's and the early-stopping bookkeeping go into the checkpoint
written after every epoch, so a resumed run continues exactly where the interrupted one stopped and ends
with the same weights.

Divergence: a non-finite batch loss or a NaN validation score stops training with ``TrainingDiverged``
(naming the epoch and batch); the best finite epoch stays in ``out`` and the diverged epoch is never
checkpointed or selected.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data import Dataset, catalogue_fingerprint
from ..eval import NonFiniteScores, Protocol, evaluate
from ..eval.protocols import split_histories
from .base import CFModel, load_weights, pad_sequences

SELECTION_METRIC = "NDCG@10"
CHECKPOINT = "checkpoint"
RESUMABLE_CHANGES = ("epochs", "patience")  # a resumed run may train longer or stop otherwise; nothing else changes


class TrainingDiverged(RuntimeError):
    """The loss or the validation scores became NaN or infinite."""


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    seed: int = 42


@dataclass
class TrainState:
    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -1.0
    epochs_without_gain: int = 0
    log: list[dict] = field(default_factory=list)


def training_rows(dataset: Dataset, max_len: int, collapse_prefixes: bool) -> torch.Tensor:
    """(n, max_len + 1) left-padded rows: each train example's history, then its target.

    With ``collapse_prefixes`` (models trained at every position), a row whose whole sequence is the start
    of the same user's next row is dropped: the next row trains the same next-item predictions. Leave-one-out
    data holds every prefix of every user as its own example, so this removes most rows and none of the signal.
    """
    histories = split_histories(*dataset.histories("train"))
    table = dataset.table("train")
    targets = table.column("target").to_numpy()
    rows = pad_sequences([np.append(h, t) for h, t in zip(histories, targets)], max_len + 1)
    if not collapse_prefixes or len(rows) < 2:
        return rows
    lengths = np.array([len(h) + 1 for h in histories])
    users = table.column("user_id").to_numpy()
    contained = np.zeros(len(rows), dtype=bool)
    contained[:-1] = ((users[1:] == users[:-1]) & (lengths[1:] == lengths[:-1] + 1) & (lengths[1:] <= max_len + 1)
                      & (rows[1:, :-1] == rows[:-1, 1:]).all(dim=1).numpy())
    return rows[torch.from_numpy(~contained)]


def validation_score(model: CFModel, dataset: Dataset) -> dict[str, float]:
    if dataset.table("valid").num_rows == 0:
        return {}
    return evaluate(model, dataset, "valid", ks=(10,), protocol=Protocol("full")).metrics


def train(model: CFModel, dataset: Dataset, config: TrainConfig, out: str | Path, resume: bool = False,
          progress: bool = True) -> TrainState:
    """Fits ``model``, leaving it (and ``out``, via ``save_pretrained``) at the best epoch's weights."""
    out = Path(out)
    model.attach_catalogue(dataset)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = TrainState()
    rows = training_rows(dataset, model.config.max_len, collapse_prefixes=model.config.positions == "all")
    settings = run_settings(model, config, rows)
    if resume and (out / CHECKPOINT / "state.pt").exists():
        state = load_checkpoint(out / CHECKPOINT, model, optimiser, generator, settings)
        if progress:
            tqdm.write(f"resuming after epoch {state.epoch} (best {SELECTION_METRIC} {state.best_score:.4f} "
                       f"at epoch {state.best_epoch})")
    has_valid = dataset.table("valid").num_rows > 0
    while state.epoch < config.epochs and (not has_valid or state.epochs_without_gain < config.patience):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        batches = range(0, len(rows), config.batch_size)
        bar = tqdm(batches, desc=f"epoch {state.epoch + 1}", disable=not progress, leave=False)
        for start in bar:
            loss = model.loss(rows[order[start:start + config.batch_size]], generator)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"epoch {state.epoch + 1}, batch {start // config.batch_size + 1}: the loss is "
                                       f"{loss.item()}; {kept(state, out)} (lower --lr?)")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        seconds = time.perf_counter() - started
        state.epoch += 1
        try:
            metrics = validation_score(model, dataset)
        except NonFiniteScores as exc:
            raise TrainingDiverged(f"epoch {state.epoch}: validation failed: {exc}; {kept(state, out)}") from None
        score = metrics.get(SELECTION_METRIC, float(state.epoch))  # without valid rows: the latest epoch wins
        if score > state.best_score:
            state.best_score, state.best_epoch, state.epochs_without_gain = score, state.epoch, 0
            model.save_pretrained(out)
        else:
            state.epochs_without_gain += 1
        state.log.append({"epoch": state.epoch, "loss": total / len(batches), "seconds": round(seconds, 3),
                          **{f"valid_{k}": v for k, v in metrics.items()}})
        if progress:
            shown = f" valid {SELECTION_METRIC} {metrics[SELECTION_METRIC]:.4f}" if metrics else ""
            tqdm.write(f"epoch {state.epoch}: loss {total / len(batches):.4f}{shown} ({seconds:.1f}s)")
        save_checkpoint(out / CHECKPOINT, model, optimiser, generator, state, settings)
        write_log(out / "train_log.csv", state.log)
    load_weights(model, out / "model.safetensors")  # hand back the best epoch, not the last
    model.eval()
    return state


def run_settings(model: CFModel, config: TrainConfig, rows: torch.Tensor) -> dict:
    """What makes a run this run: a checkpoint resumes only into the same model, catalogue, data and optimiser."""
    return {"model": model.model_type, **asdict(model.config), "n_items": model.n_items,
            "catalogue": catalogue_fingerprint(model.raw_ids, model.titles),
            "training rows": f"{len(rows):,} rows, digest {hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:12]}",
            **{k: v for k, v in asdict(config).items() if k not in RESUMABLE_CHANGES}}


def settings_differences(saved: dict, settings: dict) -> list[str]:
    return [f"{name} {saved.get(name)!r} (now {value!r})" for name, value in settings.items()
            if saved.get(name) != value]
def kept(state: TrainState, out: Path) -> str:
    if state.best_epoch == 0:
        return "no epoch was kept"
    return f"the best finite epoch ({state.best_epoch}) stays in {out}"


def save_checkpoint(directory: Path, model: CFModel, optimiser, generator: torch.Generator,
                    state: TrainState, settings: dict) -> None:
    """Written to a temporary name and renamed, so an interruption never leaves half a checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors.tmp")
    torch.save({"optimiser": optimiser.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "state": asdict(state), "settings": settings},
               directory / "state.pt.tmp")
    os.replace(directory / "model.safetensors.tmp", directory / "model.safetensors")
    os.replace(directory / "state.pt.tmp", directory / "state.pt")


def load_checkpoint(directory: Path, model: CFModel, optimiser, generator: torch.Generator,
                    settings: dict) -> TrainState:
    """Refuses a checkpoint of another run (listing the settings that differ) or one that cannot be read."""
    try:
        saved = torch.load(directory / "state.pt", weights_only=False)
    except Exception as exc:  # truncated, overwritten, not a torch file: pickle and zip raise many kinds
        raise ValueError(f"cannot resume from {directory / 'state.pt'}: the file is unreadable ({exc}); "
                         "start afresh (--overwrite)") from exc
    changed = settings_differences(saved.get("settings", settings), settings)  # earlier versions saved none
    if changed:
        raise ValueError(f"cannot resume from {directory}: it belongs to a run with other settings: "
                         f"{'; '.join(changed)}. Resume with that run's settings, or start afresh (--overwrite)")
    load_weights(model, directory / "model.safetensors")
    optimiser.load_state_dict(saved["optimiser"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainState(**saved["state"])


def write_log(path: Path, log: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in log for k in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(log)
