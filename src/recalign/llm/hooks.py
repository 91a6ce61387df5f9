"""Hooks into the LLM's input: "soft tokens" written into the input embeddings before the decoder reads them.

Shared by the SFT loop (``recalign.llm.train``) and the constrained decoder (``recalign.decode``), and light on
imports so the decoder does not pull in the training stack.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


class EmbeddingHook(nn.Module):
    """Rewrites a batch's input embeddings before the decoder reads them: "soft tokens" such as projected CF
    embeddings written at placeholder tokens (CoLLM/LLaRA, TCA4Rec's ``--use_feature``, A-LLMRec).

    ``forward(embeds (B, T, H), input_ids (B, T), histories)`` returns the (B, T, H) embeddings to use, with the
    rows at the hook's placeholder tokens replaced and every other row untouched. ``histories`` holds each row's
    history item ids (``SFTExample.history``), which the hook may read. The same hook runs in the SFT loop
    (``LabelPositionLM``) and in the prefill of the constrained beam search (``recalign.decode.beam_search``);
    generated tokens never hold placeholders, so the one-token decoding steps use plain ids.
    """

    def forward(self, embeds: torch.Tensor, input_ids: torch.Tensor,
                histories: Sequence[Sequence[int]]) -> torch.Tensor:
        raise NotImplementedError

    def save_pretrained(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: Path, dataset=None) -> EmbeddingHook:
        raise NotImplementedError


HOOK_RECORD = "embedding_hook.json"


def save_hook(hook: EmbeddingHook, directory: Path) -> None:
    """The hook's own files, plus which class reads them back: the saved recommender (this package) never has to
    import the alignment method (a higher package) that defined the hook."""
    hook.save_pretrained(directory)
    record = {"class": f"{type(hook).__module__}:{type(hook).__qualname__}"}
    (Path(directory) / HOOK_RECORD).write_text(json.dumps(record) + "\n")


def load_hook(directory: Path, dataset=None) -> EmbeddingHook:
    record = json.loads((Path(directory) / HOOK_RECORD).read_text())
    module, name = record["class"].split(":")
    return getattr(importlib.import_module(module), name).from_pretrained(directory, dataset)


def hooked_embeddings(model: nn.Module, input_ids: torch.Tensor, hook: EmbeddingHook,
                      histories: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """The input embeddings of ``input_ids`` (the model's own lookup), rewritten by ``hook``."""
    if histories is None or len(histories) != input_ids.shape[0]:
        raise ValueError(f"an embedding hook needs one history per row: {input_ids.shape[0]} rows, "
                         f"{'no' if histories is None else len(histories)} histories")
    return hook(model.get_input_embeddings()(input_ids), input_ids, histories)


def overwrite_rows(embeds: torch.Tensor, rows: list[torch.Tensor], cols: list[torch.Tensor],
                   values: list[torch.Tensor]) -> torch.Tensor:
    """``embeds`` with the rows at (rows[k], cols[k]) replaced by values[k] (cast to the embeddings' dtype and
    device), out of place so autograd reaches the values; ``embeds`` itself when there is nothing to write."""
    if not rows:
        return embeds
    index = (torch.cat(rows).to(embeds.device), torch.cat(cols).to(embeds.device))
    return embeds.index_put(index, torch.cat(values).to(embeds.device, embeds.dtype))
