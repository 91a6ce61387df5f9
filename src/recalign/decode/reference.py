"""The baseline recalign's beam search is checked and timed against: transformers' ``generate`` with beam search,
constrained to the same item index through ``prefix_allowed_tokens_fn``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..index import ItemIndex
from ..llm.hooks import EmbeddingHook, hooked_embeddings
from .beam import Ranked, left_pad

FILLER_SCORE = -1e6  # transformers scores slots that no real beam reached around -1e9


def generate_constrained(model, prompts: list[list[int]], index: ItemIndex, num_beams: int, pad_id: int,
                         allowed: Callable[[list[int]], list[int]] | None = None, length_penalty: float = 1.0,
                         embedding_hook: EmbeddingHook | None = None,
                         histories: Sequence[Sequence[int]] | None = None) -> list[Ranked]:
    """Each prompt's finished identifiers as ``generate`` ranks them. ``allowed(prefix)`` gives the tokens that may
    follow a generated prefix (default: the index's own lookup); off the trie only EOS is allowed. With
    ``embedding_hook``, ``generate`` reads the hooked prompt embeddings (``inputs_embeds``)."""
    allowed = allowed or index.allowed_tokens
    ids, mask = left_pad(prompts, pad_id)
    eos = index.eos_id
    inputs = {"input_ids": ids}
    if embedding_hook is not None:
        inputs = {"inputs_embeds": hooked_embeddings(model, ids, embedding_hook, histories)}
    width = ids.shape[1] if embedding_hook is None else 0  # with inputs_embeds, generate returns new tokens only

    def prefix_allowed(_, generated: torch.Tensor) -> list[int]:
        return allowed(generated[width:].tolist()) or [eos]

    out = model.generate(**inputs, attention_mask=mask, num_beams=num_beams, num_return_sequences=num_beams,
                         do_sample=False, max_new_tokens=index.max_depth, prefix_allowed_tokens_fn=prefix_allowed,
                         pad_token_id=pad_id, eos_token_id=eos, length_penalty=length_penalty, early_stopping=False,
                         output_scores=True, return_dict_in_generate=True)
    results = []
    for user in range(len(prompts)):
        leaves, scores = [], []
        for row in range(user * num_beams, (user + 1) * num_beams):
            seq, score = out.sequences[row, width:].tolist(), out.sequences_scores[row].item()
            if eos in seq and score > FILLER_SCORE:
                leaves.append(index.walk(seq[:seq.index(eos) + 1]))
                scores.append(score)
        results.append(Ranked(leaves, scores))
    return results
