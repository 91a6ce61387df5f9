"""GRPO over constrained beams (MiniOneRec's RL stage, reused by TS-Rec): rewards, advantages, the loss, and the
completions' log-probabilities with each prompt encoded once for its whole group.

A prompt's group is the identifiers its constrained beam search returns (``recalign.decode.beam_search``), best
first, so every candidate is a catalogue item. Rewards are per candidate; advantages are normalised within each
group; the loss is TRL's GRPO per-token loss (``loss_type="grpo"``, one optimisation step per generation) with the
k3 estimator of the KL divergence to a frozen reference model. The reference's constants are the defaults:
epsilon 1e-4 added to the group's *unbiased* standard deviation (``torch.std``, as TRL), beta 1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..decode.beam import cache_argument_name, left_pad
from ..llm.backbones import unwrap_causal_lm
from ..llm.hooks import EmbeddingHook, hooked_embeddings

ADVANTAGE_EPSILON = 1e-4  # MiniOneRec / TRL: A = (r - mean) / (std + 1e-4)
REWARDS = ("rule", "ranking", "cf")
CF_REWARDS = ("score", "rank")


def parse_reward(spec: str) -> tuple[str, ...]:
    """'ranking', 'cf', 'rule', or a '+'-joined mix such as 'ranking+cf' (the terms are summed)."""
    parts = tuple(part.strip() for part in spec.split("+") if part.strip())
    unknown = [part for part in parts if part not in REWARDS]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise ValueError(f"reward must be one of {', '.join(REWARDS)} or a '+'-joined mix of them, not {spec!r}")
    if {"rule", "ranking"} <= set(parts):
        raise ValueError("'ranking' already holds the rule reward (1 for the target): use one of them")
    return parts


def rule_rewards(leaves: Sequence[int], target_leaf: int) -> np.ndarray:
    """1 for the beam that is the target's identifier, 0 for the others (MiniOneRec's ``rule`` reward: the
    generated identifier's text equals the target's, so items sharing it count too)."""
    return np.array([1.0 if leaf == target_leaf else 0.0 for leaf in leaves])


def rank_penalties(leaves: Sequence[int], target_leaf: int) -> np.ndarray:
    """MiniOneRec's rank penalty, only when the target is among the beams: the target's beam gets 0, a wrong beam
    at 0-based position i gets -(1 / log2(i + 2)) / sum_j 1 / log2(j + 2) over the group's positions (16 beams:
    -0.164 at rank 0 to -0.040 at rank 15). Without the target in the group every beam gets 0."""
    if target_leaf not in leaves:
        return np.zeros(len(leaves))
    discounts = 1.0 / np.log2(np.arange(len(leaves)) + 2.0)
    penalties = -discounts / discounts.sum()
    return np.where(np.asarray(leaves) == target_leaf, 0.0, penalties)


def cf_rewards(leaf_items: Sequence[np.ndarray], scores: np.ndarray, kind: str = "score") -> np.ndarray:
    """A CF model's judgement of each candidate: ``scores`` are its full-catalogue scores for the user; a candidate
    identifier shared by several items takes its best item. "score": that item's CF score (MiniOneRec's ``sasrec``
    reward); "rank": 1 / log2(rank + 2) of that item in the CF model's ranking of the whole catalogue (0-based,
    ties pessimistic), a bounded reward that keeps only the order."""
    best = np.array([scores[items].max() for items in leaf_items])
    if kind == "score":
        return best.astype(np.float64)
    if kind == "rank":
        ranks = (scores[None, :] >= best[:, None]).sum(1) - 1
        return 1.0 / np.log2(ranks + 2.0)
    raise ValueError(f"the CF reward is one of {', '.join(CF_REWARDS)}, not {kind!r}")


def group_advantages(rewards: torch.Tensor, epsilon: float = ADVANTAGE_EPSILON) -> torch.Tensor:
    """(groups, G) rewards -> advantages (r - group mean) / (group's unbiased std + epsilon), TRL's convention.
    A group of equal rewards (the target missed, with the ranking reward) gets advantages 0."""
    mean = rewards.mean(1, keepdim=True)
    std = rewards.std(1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + epsilon)


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(ref - logp) - (ref - logp) - 1 (>= 0, 0 when
    equal)."""
    delta = ref_log_probs - log_probs
    return torch.exp(delta) - delta - 1


def grpo_loss(log_probs: torch.Tensor, ref_log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence losses and KLs of (N, L) completion-token log-probs: the token loss
    -(exp(logp - sg(logp)) * A - beta * KL_t), averaged over each sequence's tokens (``mask``). The ratio is 1
    (one step per generation), so its gradient is A * grad logp: REINFORCE with a group baseline, plus the KL."""
    mask = mask.to(log_probs.dtype)
    kl = k3_kl(log_probs, ref_log_probs)
    ratio = torch.exp(log_probs - log_probs.detach())
    per_token = -(ratio * advantages.unsqueeze(1) - beta * kl)
    lengths = mask.sum(1).clamp(min=1)
    return (per_token * mask).sum(1) / lengths, ((kl * mask).sum(1) / lengths).detach()


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, :len(sequence)] = 1
    return ids, mask


def group_log_probs(model, prompts: Sequence[Sequence[int]], groups: Sequence[Sequence[Sequence[int]]],
                    pad_id: int, embedding_hook: EmbeddingHook | None = None,
                    histories: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of every completion's tokens, (N, L) with a (N, L) mask, N the completions of all groups
    in order. Each prompt runs once (left-padded, with its key-value cache kept); the cache rows are then
    repeated for the prompt's completions, which run together in one forward (right-padded, positions continuing
    the prompt's). Differentiable through both passes."""
    device = next(model.parameters()).device
    ids, prompt_mask = left_pad([list(p) for p in prompts], pad_id)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    ids, prompt_mask, positions = ids.to(device), prompt_mask.to(device), positions.to(device)
    if embedding_hook is None:
        inputs = {"input_ids": ids}
    else:
        inputs = {"inputs_embeds": hooked_embeddings(unwrap_causal_lm(model), ids, embedding_hook, histories)}
    out = model(**inputs, attention_mask=prompt_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache_name = cache_argument_name()
    cache = getattr(out, cache_name)
    owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups])).to(device)
    first_logits = out.logits[:, -1][owner]  # the prompt's last position predicts each completion's first token
    cache.reorder_cache(owner)  # row i of the cache becomes its completion's prompt (index_select: differentiable)
    completions, completion_mask = right_pad([c for group in groups for c in group], pad_id)
    completions, completion_mask = completions.to(device), completion_mask.to(device)
    start = prompt_mask.sum(-1)[owner].unsqueeze(1)
    out = model(input_ids=completions, attention_mask=torch.cat([prompt_mask[owner], completion_mask], 1),
                position_ids=start + torch.arange(completions.shape[1], device=device), use_cache=True,
                **{cache_name: cache})
    # completion position j predicts token j + 1
    logits = torch.cat([first_logits.unsqueeze(1), out.logits[:, :-1]], 1).float()
    log_probs = torch.log_softmax(logits, -1).gather(2, completions.unsqueeze(2)).squeeze(2)
    return log_probs, completion_mask


def naive_log_probs(model, prompts: Sequence[Sequence[int]], groups: Sequence[Sequence[Sequence[int]]],
                    embedding_hook: EmbeddingHook | None = None,
                    histories: Sequence[Sequence[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The slow oracle of ``group_log_probs``: one unpadded forward of prompt + completion per completion."""
    device = next(model.parameters()).device
    rows = []
    for p, (prompt, group) in enumerate(zip(prompts, groups)):
        for completion in group:
            ids = torch.tensor([list(prompt) + list(completion)], device=device)
            if embedding_hook is None:
                logits = model(input_ids=ids).logits
            else:
                embeds = hooked_embeddings(unwrap_causal_lm(model), ids, embedding_hook, [histories[p]])
                logits = model(inputs_embeds=embeds).logits
            logits = logits[0, len(prompt) - 1:-1].float()
            rows.append(torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).squeeze(1))
    width = max(len(r) for r in rows)
    log_probs = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    mask = torch.stack([torch.arange(width, device=device) < len(r) for r in rows]).long()
    return log_probs, mask
