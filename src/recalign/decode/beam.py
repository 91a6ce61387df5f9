"""Constrained beam search over an item index: every finished beam is a catalogue item.

The search reproduces the selection rule of transformers' beam search (``generate(num_beams=K)`` with
``length_penalty``, ``early_stopping=False``) with the trie as the constraint, so its rankings can be checked
against ``generate`` + ``prefix_allowed_tokens_fn``. Scores are sums of log-probabilities over the *whole*
vocabulary (not renormalised over the allowed tokens), divided by (generated length, EOS included) ** length_penalty.

Where it differs is cost: the prompt is prefilled once per user (not once per beam); each beam carries its trie
node, so the allowed tokens are a gather of the node's children (no per-beam Python); users whose search has
ended leave the batch at once; a beam needs no token history, since its node names its prefix.

With an ``embedding_hook`` (``recalign.llm.train.EmbeddingHook``: e.g. CF features written at placeholder
tokens), the prefill reads the hook's ``inputs_embeds`` (given each prompt's history); the one-token steps read
plain ids, since generated tokens never hold placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..index import ItemIndex
from ..llm.hooks import EmbeddingHook, hooked_embeddings

NEG_INF = float("-inf")


@dataclass
class BeamConfig:
    num_beams: int = 10
    length_penalty: float = 1.0
    batch_size: int = 8  # users per forward pass (each with num_beams rows after the prompt)


@dataclass
class Ranked:
    """One user's finished identifiers, best first: trie leaves and their length-normalised scores."""

    leaves: list[int]
    scores: list[float]

    def items(self, index: ItemIndex, k: int | None = None) -> list[int]:
        """Distinct item ids in rank order; items sharing an identifier follow each other in id order."""
        ranked = [item for leaf in self.leaves for item in index.leaf_items(leaf).tolist()]
        return ranked[:k] if k is not None else ranked


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


@torch.no_grad()
def beam_search(model, prompts: list[list[int]], index: ItemIndex, config: BeamConfig | None = None,
                pad_id: int = 0, embedding_hook: EmbeddingHook | None = None,
                histories: Sequence[Sequence[int]] | None = None) -> list[Ranked]:
    """The top ``num_beams`` identifiers for each prompt (fewer if the catalogue has fewer).

    ``embedding_hook`` rewrites the prompts' input embeddings in the prefill; it reads ``histories`` (one per
    prompt, the history the prompt was written from)."""
    config = config or BeamConfig()
    if embedding_hook is not None and (histories is None or len(histories) != len(prompts)):
        raise ValueError(f"an embedding hook needs one history per prompt: {len(prompts)} prompts, "
                         f"{'no' if histories is None else len(histories)} histories")
    results: list[Ranked] = []
    for start in range(0, len(prompts), config.batch_size):
        stop = start + config.batch_size
        results += _search_batch(model, prompts[start:stop], index, config, pad_id, embedding_hook,
                                 histories[start:stop] if embedding_hook is not None else None)
    return results


def _search_batch(model, prompts: list[list[int]], index: ItemIndex, config: BeamConfig, pad_id: int,
                  embedding_hook: EmbeddingHook | None = None,
                  histories: Sequence[Sequence[int]] | None = None) -> list[Ranked]:
    k, lp = config.num_beams, config.length_penalty
    n_users = len(prompts)
    ids, prompt_mask = left_pad(prompts, pad_id)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    if embedding_hook is None:
        inputs = {"input_ids": ids.to(model.device)}
    else:
        inputs = {"inputs_embeds": hooked_embeddings(model, ids.to(model.device), embedding_hook, histories)}
    out = model(**inputs, attention_mask=prompt_mask.to(model.device),
                position_ids=positions.to(model.device), use_cache=True, logits_to_keep=1)
    cache_name = cache_argument_name()
    cache = getattr(out, cache_name)
    log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu().repeat_interleave(k, 0)
    cache.batch_repeat_interleave(k)
    prompt_mask = prompt_mask.repeat_interleave(k, 0)
    next_position = prompt_mask.sum(-1)

    users = torch.arange(n_users)  # which original users are still searching
    run_score = torch.full((n_users, k), NEG_INF)
    run_score[:, 0] = 0.0  # all beams start at the root; only the first is live, as in transformers
    run_node = torch.zeros((n_users, k), dtype=torch.long)
    fin_score = torch.full((n_users, k), NEG_INF)
    fin_leaf = torch.full((n_users, k), -1, dtype=torch.long)
    final_score, final_leaf = fin_score.clone(), fin_leaf.clone()

    for step in range(index.max_depth):
        b = len(users)
        tokens, children, valid = index.children(run_node.view(-1))
        width = tokens.shape[1]
        cand = run_score.view(-1, 1) + log_probs.gather(1, tokens)
        cand = cand.masked_fill(~valid, NEG_INF).view(b, k * width)
        n_top = min(2 * k, k * width)
        top_score, top_flat = torch.topk(cand, n_top, dim=1)
        top_beam = top_flat // width
        top_token = tokens.view(b, k * width).gather(1, top_flat)
        top_node = children.view(b, k * width).gather(1, top_flat)
        finished = top_token == index.eos_id

        # running beams: the best k candidates that did not just emit EOS
        run_score, keep = torch.topk(top_score.masked_fill(finished, NEG_INF), k, dim=1)  # n_top >= k always
        run_node, parent, new_token = top_node.gather(1, keep), top_beam.gather(1, keep), top_token.gather(1, keep)

        # finished beams: EOS among the top k candidates enters the list of k best (length-normalised)
        eligible = finished & (torch.arange(n_top) < k)
        new_fin = (top_score / (step + 1) ** lp).masked_fill(~eligible, NEG_INF)
        merged_score, pick = torch.topk(torch.cat([fin_score, new_fin], 1), k, dim=1)
        fin_leaf = torch.cat([fin_leaf, top_node], 1).gather(1, pick)
        fin_score = merged_score

        # transformers' stopping heuristic (early_stopping=False): stop once every slot holds a finished beam and
        # the best running beam, normalised at the current length, cannot beat the worst of them
        best_running = run_score[:, 0] / (step + 1) ** lp
        all_full = torch.isfinite(fin_score).all(1)
        going = torch.where(all_full, best_running > fin_score.min(1).values, torch.isfinite(best_running))
        done = ~going
        final_score[users[done]] = fin_score[done]
        final_leaf[users[done]] = fin_leaf[done]
        if going.sum() == 0 or step + 1 == index.max_depth:
            final_score[users[going]] = fin_score[going]
            final_leaf[users[going]] = fin_leaf[going]
            break

        rows = (torch.nonzero(going).squeeze(-1) * k).unsqueeze(-1) + parent[going]  # beam rows that continue
        _reorder(cache, rows.view(-1).to(model.device), shared=ids.shape[1] if bool(going.all()) else 0)
        users, run_score, run_node = users[going], run_score[going], run_node[going]
        fin_score, fin_leaf = fin_score[going], fin_leaf[going]
        new_token, next_position = new_token[going].view(-1), next_position[rows.view(-1)]
        prompt_mask = prompt_mask[rows.view(-1)]
        mask = torch.cat([prompt_mask, torch.ones((len(new_token), step + 1), dtype=torch.long)], 1)
        out = model(input_ids=new_token.unsqueeze(-1).to(model.device), attention_mask=mask.to(model.device),
                    position_ids=next_position.unsqueeze(-1).to(model.device), use_cache=True,
                    **{cache_name: cache})
        log_probs = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
        next_position = next_position + 1

    return [Ranked(leaves=final_leaf[u][torch.isfinite(final_score[u])].tolist(),
                   scores=final_score[u][torch.isfinite(final_score[u])].tolist()) for u in range(n_users)]


def cache_argument_name() -> str:
    """The key-value cache's argument and output name: transformers 5.2x renamed ``past_key_values`` to ``cache``
    and warns (FutureWarning) on every call that uses the old one."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _reorder(cache, rows: torch.Tensor, shared: int) -> None:
    """Moves each beam's cache row to where its continuation sits. The first ``shared`` positions (the prompt)
    are equal for all beams of a user, so while no user leaves the batch only the generated part is copied."""
    layers = getattr(cache, "layers", [])
    if shared == 0 or not layers or not all(hasattr(layer, "keys") and layer.keys.dim() == 4 for layer in layers):
        cache.reorder_cache(rows)  # also drops the rows of users whose search has ended
        return
    for layer in layers:
        layer.keys[:, :, shared:] = layer.keys[:, :, shared:].index_select(0, rows)
        layer.values[:, :, shared:] = layer.values[:, :, shared:].index_select(0, rows)
