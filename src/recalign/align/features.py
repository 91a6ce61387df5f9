"""CF features as soft tokens: projected CF embeddings written into the LLM's input embeddings at placeholders.

TCA4Rec's optional ``--use_feature`` path (shared/reference/tca4rec.md §1.2 and §5; CoLLM/LLaRA style). The
prompt writes ``[UserEmb]`` before the whole text and ``"title"[ItemEmb]`` for each history item; both
placeholders are special tokens. ``CFFeatureInjector`` (an ``EmbeddingHook`` of the SFT loop and the beam
search) overwrites their input embeddings:

- the ``[UserEmb]`` row with ``user_mlp(e_u)``, e_u the frozen CF model's user embedding of the row's history
  (the full history, padded to the CF model's ``max_len``: the user exactly as TCA's soft labels score it);
- the k-th ``[ItemEmb]`` row with ``item_mlp(E_{h_k})``, h_k the k-th history item *as written in the prompt*
  (the last ``max_history`` items, oldest first), E the CF model's item embeddings.

Each MLP is the reference's Linear(cf dim -> 320) -> ReLU -> Linear(320 -> LLM hidden), in float32; its output
is cast to the embeddings' dtype. The reference uses *one* MLP for users and items; recalign's default gives each
its own, and ``shared_mlp=True`` (``--feature-shared-mlp``) is the reference's single one. Every other row stays
bit-identical. Validation: a row holds at most one ``[UserEmb]``, and exactly as many ``[ItemEmb]`` as history
items shown.

**The reference's oddity** (§5, §9.10): its optimiser only collects the PEFT model's parameters, so the MLPs are
never trained and stay at their random initialisation. ``trainable=False`` reproduces this (random init from
``seed``, ``requires_grad`` off, nothing optimised or checkpointed); ``trainable=True`` (the default) trains them.

Nothing here knows about prompts beyond the two token ids, so other soft-token methods (A-LLMRec's projected CF
embeddings) can reuse the class or its pattern.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..cf.base import CFModel
from ..cf.base import from_pretrained as load_cf_model
from ..llm.backbones import seeded_draws
from ..llm.hooks import EmbeddingHook, overwrite_rows

WEIGHTS = "feature_injector.safetensors"
CONFIG = "feature_injector.json"
CF_FOLDER = "cf"
CF_PREFIX = "cf_model."


@dataclass(frozen=True)
class InjectorConfig:
    user_token_id: int | None  # id of [UserEmb] (None: the prompts carry no user placeholder)
    item_token_id: int | None  # id of [ItemEmb] (None: no item placeholders)
    hidden_size: int  # the LLM's embedding width
    trainable: bool = True  # False: the reference's bug, the MLPs keep their random init
    max_history: int | None = None  # history items written into the prompt (the most recent); None = all
    mlp_hidden: int = 320  # the reference's Linear(64 -> 320) -> ReLU -> Linear(320 -> d_model)
    seed: int = 0  # the MLPs' initialisation
    shared_mlp: bool = False  # one MLP for users and items (the reference); the default gives each its own


def feature_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class CFFeatureInjector(EmbeddingHook):
    """Writes ``user_mlp(CF user embedding)`` at ``[UserEmb]`` and ``item_mlp(CF item embedding)`` at each
    ``[ItemEmb]`` (see the module docstring). The CF model is a frozen submodule kept in eval mode."""

    def __init__(self, cf_model: CFModel, user_token_id: int | None, item_token_id: int | None, hidden_size: int,
                 trainable: bool = True, max_history: int | None = None, mlp_hidden: int = 320, seed: int = 0,
                 shared_mlp: bool = False):
        super().__init__()
        if user_token_id is None and item_token_id is None:
            raise ValueError("a feature injector needs a user or an item placeholder token")
        if user_token_id is not None and user_token_id == item_token_id:
            raise ValueError("the user and item placeholders must be different tokens")
        if max_history is not None and max_history < 0:
            raise ValueError(f"max_history must be >= 0, not {max_history}")
        self.config = InjectorConfig(user_token_id, item_token_id, hidden_size, trainable, max_history, mlp_hidden,
                                     seed, shared_mlp)
        self.cf_model = cf_model.eval().requires_grad_(False)
        with torch.no_grad():
            user_dim = cf_model.user_vectors(cf_model.pad([np.zeros(1, dtype=np.int64)]).to(self._cf_device)).shape[-1]
            item_dim = cf_model.item_embeddings().shape[-1]
        # the caller's random stream (data order, LoRA dropout) is left as it would be without features
        if shared_mlp and user_dim != item_dim:
            raise ValueError(f"a shared MLP needs CF user and item vectors of one size, not {user_dim} and {item_dim}")
        with seeded_draws(seed):
            # registered once when shared: the one MLP is saved, optimised and checkpointed as one module
            self.user_mlp = None if shared_mlp else feature_mlp(user_dim, mlp_hidden, hidden_size)
            self.item_mlp = feature_mlp(item_dim, mlp_hidden, hidden_size)
        self.to(self._cf_device)
        if not trainable:  # the reference's optimiser never sees its MLP (§5): random init, never updated
            self.item_mlp.requires_grad_(False)
            self.user_projection.requires_grad_(False)

    @property
    def user_projection(self) -> nn.Module:
        return self.item_mlp if self.user_mlp is None else self.user_mlp

    @property
    def _cf_device(self) -> torch.device:
        return next(self.cf_model.parameters()).device

    def train(self, mode: bool = True) -> CFFeatureInjector:
        super().train(mode)
        self.cf_model.eval()  # frozen: its dropout must stay off while the LLM trains
        return self

    def shown(self, history: Sequence[int]) -> list[int]:
        """The history items the prompt writes (the last ``max_history``), oldest first."""
        items = [int(i) for i in history]
        limit = self.config.max_history
        if limit is None:
            return items
        return items[-limit:] if limit else []

    def forward(self, embeds: torch.Tensor, input_ids: torch.Tensor,
                histories: Sequence[Sequence[int]]) -> torch.Tensor:
        if embeds.shape[:2] != input_ids.shape or embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"embeddings of shape {tuple(embeds.shape)} do not fit ids of shape "
                             f"{tuple(input_ids.shape)} and hidden size {self.config.hidden_size}")
        if len(histories) != input_ids.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} rows but {len(histories)} histories")
        rows, cols, values = [], [], []
        device = self._cf_device
        if self.config.item_token_id is not None:
            mask = input_ids == self.config.item_token_id
            shown = [self.shown(h) for h in histories]
            for row, (count, items) in enumerate(zip(mask.sum(1).tolist(), shown)):
                if count != len(items):
                    raise ValueError(f"row {row} holds {count} [ItemEmb] placeholder(s) (token "
                                     f"{self.config.item_token_id}) for {len(items)} history item(s) shown in the "
                                     f"prompt (max_history {self.config.max_history}): the prompt and the history "
                                     "disagree")
            item_rows, item_cols = mask.nonzero(as_tuple=True)  # row-major: a row's placeholders left to right
            if len(item_rows):
                ids = torch.tensor([i for items in shown for i in items], dtype=torch.long, device=device)
                with torch.no_grad():
                    features = self.cf_model.item_embeddings()[ids].float()
                rows.append(item_rows)
                cols.append(item_cols)
                values.append(self.item_mlp(features))
        if self.config.user_token_id is not None:
            mask = input_ids == self.config.user_token_id
            counts = mask.sum(1)
            if bool((counts > 1).any()):
                row = int(torch.nonzero(counts > 1)[0])
                raise ValueError(f"row {row} holds {int(counts[row])} [UserEmb] placeholders (token "
                                 f"{self.config.user_token_id}); a prompt has at most one")
            user_rows, user_cols = mask.nonzero(as_tuple=True)
            if len(user_rows):
                picked = [np.asarray(histories[r], dtype=np.int64) for r in user_rows.tolist()]
                with torch.no_grad():
                    self.cf_model.eval()
                    features = self.cf_model.user_vectors(self.cf_model.pad(picked).to(device)).float()
                rows.append(user_rows)
                cols.append(user_cols)
                values.append(self.user_projection(features))
        return overwrite_rows(embeds, rows, cols, values)

    # persistence --------------------------------------------------------------------------------------------

    @classmethod
    def for_recommender(cls, cf_model: CFModel, user_token_id: int, item_token_id: int, hidden_size: int,
                        config) -> CFFeatureInjector:
        """The ``feature_hook`` of ``LLMRecommender.create``: ``partial(CFFeatureInjector.for_recommender, cf)``.
        The recommender's config decides whether the MLPs train, how many history items the prompt shows and
        the seed of their initialisation."""
        return cls(cf_model, user_token_id, item_token_id, hidden_size, trainable=not config.feature_frozen,
                   max_history=config.max_history, seed=config.seed, shared_mlp=config.feature_shared_mlp)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``feature_injector.safetensors`` (the MLPs), ``feature_injector.json`` (the config) and ``cf/`` (the CF
        model, through its own ``save_pretrained``), so the folder answers on its own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                   if not k.startswith(CF_PREFIX)}
        save_file(weights, directory / WEIGHTS)
        (directory / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        self.cf_model.save_pretrained(directory / CF_FOLDER)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dataset=None) -> CFFeatureInjector:
        """Loads what ``save_pretrained`` wrote; with ``dataset``, the CF model must be of its catalogue."""
        directory = Path(directory)
        if not (directory / CONFIG).exists():
            raise FileNotFoundError(f"{directory} holds no feature injector ({CONFIG})")
        config = json.loads((directory / CONFIG).read_text())
        injector = cls(load_cf_model(directory / CF_FOLDER, dataset), **config)
        missing, unexpected = injector.load_state_dict(load_file(directory / WEIGHTS), strict=False)
        if unexpected or [k for k in missing if not k.startswith(CF_PREFIX)]:
            raise ValueError(f"{directory / WEIGHTS} does not match the injector's layout")
        return injector.eval()
