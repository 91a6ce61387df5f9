"""The interface every CF model shares, and what their training objectives have in common.

Inside a CF model item ids are shifted by one: dataset item ``i`` is row ``i + 1`` of the embedding tables
and 0 is padding. Histories are left-padded (the most recent item last) to the model's ``max_len``.

A model directory (``save_pretrained``) holds ``config.json`` (model type and hyper-parameters, catalogue
size and fingerprint), ``model.safetensors``, ``item_raw_ids.json`` (the raw id of each item row) and
``item_titles.json``, so a model is never silently used with another catalogue: ``from_pretrained(dir, dataset)``
refuses other raw ids or titles.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..data import CatalogueMismatch, Dataset, catalogue_fingerprint, check_same_catalogue

PAD = 0
LOSSES = ("ce", "bce", "bpr", "cloze")
POSITIONS = ("all", "last")

# model type -> (module in this package, class name)
MODELS = {"sasrec": ("sasrec", "SASRec"), "gru4rec": ("gru4rec", "GRU4Rec"), "bert4rec": ("bert4rec", "BERT4Rec"),
          "nextitnet": ("nextitnet", "NextItNet"), "mf": ("ncf", "MF"), "ncf": ("ncf", "NCF")}


@dataclass
class CFConfig:
    """Hyper-parameters shared by the CF models; each model's config adds its own."""

    hidden: int = 64
    max_len: int = 50
    dropout: float = 0.2
    loss: str = "ce"  # ce: softmax over the catalogue; bce: one sampled negative; bpr; cloze (BERT4Rec)
    positions: str = "all"  # all: every position of the sequence predicts its next item; last: only the last
    negatives_exclude_history: bool = False  # sampled negatives avoid the whole training row, not only the target
    # (the TCA4Rec and A-LLMRec SASRec code; their presets set it)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES or self.positions not in POSITIONS:
            raise ValueError(f"loss must be one of {LOSSES} and positions one of {POSITIONS}")


class CFModel(nn.Module):
    """Base class: subclasses define ``encode`` (or override ``user_vectors``) and ``item_vectors``."""

    model_type: str
    config_class: type[CFConfig] = CFConfig
    presets: dict[str, dict] = {}

    def __init__(self, config: CFConfig, n_items: int):
        super().__init__()
        self.config, self.n_items = config, n_items
        self.raw_ids: list[str] | None = None
        self.titles: list[str | None] | None = None  # None for models saved before titles were recorded

    # ----- what subclasses provide
    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids -> (B, L, hidden) states, state t having seen items up to t."""
        raise NotImplementedError

    def item_vectors(self) -> torch.Tensor:
        """(N, hidden) vectors of the dataset's items (padding row excluded)."""
        raise NotImplementedError

    # ----- shared behaviour
    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        return self.encode(seq)[:, -1]

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of every catalogue item for each left-padded history."""
        return self.user_vectors(seq) @ self.item_vectors().T

    def pad(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Left-padded (B, max_len) tensor of shifted ids, keeping each history's most recent items."""
        return pad_sequences(histories, self.config.max_len)

    def user_embeddings(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        return self.user_vectors(self.pad(histories))

    def item_embeddings(self) -> torch.Tensor:
        return self.item_vectors()

    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Full-catalogue scores for any histories (dataset item ids), as the evaluation protocols expect."""
        was_training = self.training
        self.eval()
        scores = self.logits(self.pad(histories)).float().numpy()
        self.train(was_training)
        return scores

    def loss(self, seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training loss on (B, L + 1) left-padded sequences: history followed by the target."""
        inputs, labels = seq[:, :-1], seq[:, 1:]
        return self.next_item_loss(self.encode(inputs), labels, generator, seq)

    def next_item_loss(self, states: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """CE over the catalogue, or BCE against one sampled negative, at the chosen positions. ``rows`` (B, *)
        are the training rows, which negatives avoid with ``negatives_exclude_history``."""
        if self.config.positions == "last":
            states, labels = states[:, -1:], labels[:, -1:]
        mask = labels != PAD
        row_of = torch.arange(len(labels)).unsqueeze(1).expand_as(labels)[mask]
        states, labels = states[mask], labels[mask]
        items = self.item_vectors()
        if self.config.loss == "ce":
            return F.cross_entropy(states @ items.T, labels - 1)
        excluded = rows[row_of] if self.config.negatives_exclude_history and rows is not None else None
        negatives = sample_negatives(labels, self.n_items, generator, excluded)
        positive = (states * items[labels - 1]).sum(-1)
        negative = (states * items[negatives - 1]).sum(-1)
        if self.config.loss == "bpr":
            return -F.logsigmoid(positive - negative).mean()
        return F.binary_cross_entropy_with_logits(torch.cat([positive, negative]),
                                                  torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]))

    # ----- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        if self.raw_ids is None:
            raise ValueError("the model does not know its catalogue; call attach_catalogue(dataset) first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": self.model_type, **asdict(self.config), "n_items": self.n_items,
                  "catalogue_fingerprint": catalogue_fingerprint(self.raw_ids, self.titles)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (directory / "item_raw_ids.json").write_text(json.dumps(self.raw_ids) + "\n")
        if self.titles is not None:
            (directory / "item_titles.json").write_text(json.dumps(self.titles, ensure_ascii=False) + "\n")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        return directory

    def attach_catalogue(self, dataset: Dataset) -> CFModel:
        raw_ids = dataset.raw_ids
        if len(raw_ids) != self.n_items:
            raise CatalogueMismatch(f"the model has {self.n_items} items, the dataset {len(raw_ids)}")
        self.raw_ids, self.titles = raw_ids, dataset.titles
        return self

    def check_catalogue(self, dataset: Dataset) -> None:
        check_same_catalogue(self.raw_ids, dataset, trained_titles=self.titles)


def model_class(model_type: str) -> type[CFModel]:
    if model_type not in MODELS:
        raise ValueError(f"unknown CF model {model_type!r}; choose from {', '.join(MODELS)}")
    module, name = MODELS[model_type]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def build_model(model_type: str, n_items: int, preset: str | None = None, **overrides) -> CFModel:
    """A fresh model from its defaults, a named preset of its class, then explicit overrides."""
    cls = model_class(model_type)
    if preset is not None and preset not in cls.presets:
        raise ValueError(f"{model_type} has no preset {preset!r}; presets: {', '.join(cls.presets) or 'none'}")
    values = {**(cls.presets[preset] if preset else {}), **{k: v for k, v in overrides.items() if v is not None}}
    known = {f.name for f in fields(cls.config_class)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{model_type} has no setting {sorted(unknown)}; settings: {sorted(known)}")
    return cls(cls.config_class(**values), n_items)


def from_pretrained(directory: str | Path, dataset: Dataset | None = None) -> CFModel:
    """Loads a saved model; with ``dataset``, refuses it unless it was trained on that very catalogue. A folder
    of another kind, or a damaged file, is a ValueError naming the file."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory} holds no CF model (no config.json); train one with `recalign cf train`")
    config = read_json(config_path)
    if not isinstance(config, dict) or "model_type" not in config:
        kind = " (an LLM recommender's: use `recalign llm eval`)" if isinstance(config, dict) and (
            "recommender" in config) else ""
        raise ValueError(f"{config_path} is not a CF model's config (no model_type){kind}")
    cls = model_class(config.pop("model_type"))
    n_items = config.pop("n_items", None)
    config.pop("catalogue_fingerprint", None)
    try:
        model = cls(cls.config_class(**config), n_items)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{config_path} is damaged or of another version: {exc}") from exc
    load_weights(model, directory / "model.safetensors")
    model.raw_ids = read_json(directory / "item_raw_ids.json")
    if (directory / "item_titles.json").exists():
        model.titles = read_json(directory / "item_titles.json")
    model.eval()
    if dataset is not None:
        model.check_catalogue(dataset)
    return model


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged (not JSON: {exc})") from exc


def load_weights(module: nn.Module, path: Path) -> None:
    """``path``'s tensors into ``module``; a missing, damaged or mismatched file is an error naming it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
    try:
        tensors = load_file(path)
    except Exception as exc:  # safetensors raises its own error type (and OSError) on a damaged header or body
        raise ValueError(f"{path} is damaged or truncated ({exc})") from exc
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit this model (another size or kind?): "
                         f"{str(exc).splitlines()[-1].strip()}") from exc


def pad_sequences(histories: Sequence[np.ndarray], length: int) -> torch.Tensor:
    """Left-padded (B, length) tensor of ids + 1, each row keeping its most recent ``length`` items."""
    out = np.zeros((len(histories), length), dtype=np.int64)
    for row, history in enumerate(histories):
        recent = np.asarray(history[-length:], dtype=np.int64)
        if len(recent):
            out[row, length - len(recent):] = recent + 1
    return torch.from_numpy(out)


def sample_negatives(positives: torch.Tensor, n_items: int, generator: torch.Generator,
                     excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform shifted ids in 1..n_items, redrawn where they hit the positive (or, with ``excluded`` (N, L), any
    id of the same row: its history)."""
    def clashes(negatives: torch.Tensor) -> torch.Tensor:
        hit = negatives == positives
        return hit | (excluded == negatives.unsqueeze(1)).any(1) if excluded is not None else hit

    if excluded is not None:
        taken = torch.cat([excluded, positives.unsqueeze(1)], 1)
        distinct = (taken.sort(1).values.diff(dim=1) != 0).sum(1) + 1 - (taken == PAD).any(1).long()
        if bool((distinct >= n_items).any()):
            raise ValueError("a training row holds every catalogue item: no negative is left to sample")
    negatives = torch.randint(1, n_items + 1, positives.shape, generator=generator)
    clash = clashes(negatives)
    while clash.any():
        negatives[clash] = torch.randint(1, n_items + 1, (int(clash.sum()),), generator=generator)
        clash = clashes(negatives)
    return negatives
