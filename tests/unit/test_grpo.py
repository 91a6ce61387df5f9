"""GRPO's pieces against hand-computed values and slow oracles: rewards, advantages, the loss, its gradient (REINFORCE
at beta 0), the KL term, and the shared-prompt log-probabilities against one forward per completion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recalign.align.grpo import (
    cf_rewards,
    group_advantages,
    group_log_probs,
    grpo_loss,
    k3_kl,
    naive_log_probs,
    parse_reward,
    rank_penalties,
    rule_rewards,
)
from recalign.llm.backbones import LoraSettings, apply_lora, load_backbone


def test_rule_and_rank_rewards_by_hand():
    leaves = [7, 3, 9, 4]
    assert rule_rewards(leaves, 9).tolist() == [0, 0, 1, 0]
    norm = 1 + 1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)
    expected = [-1 / norm, -(1 / math.log2(3)) / norm, 0.0, -(1 / math.log2(5)) / norm]
    assert np.allclose(rank_penalties(leaves, 9), expected)
    assert rank_penalties(leaves, 5).tolist() == [0, 0, 0, 0]  # target absent: no penalty at all
    # the reference's 16 beams: -0.164 at rank 0, -0.040 at rank 15
    assert round(rank_penalties(list(range(16)), 15)[0], 3) == -0.164
    assert round(rank_penalties(list(range(16)), 0)[15], 3) == -0.040


def test_cf_rewards_take_each_identifiers_best_item():
    scores = np.array([0.5, 2.0, -1.0, 3.0])
    leaf_items = [np.array([0, 1]), np.array([2]), np.array([3])]
    assert cf_rewards(leaf_items, scores, "score").tolist() == [2.0, -1.0, 3.0]
    assert np.allclose(cf_rewards(leaf_items, scores, "rank"), [1 / math.log2(3), 1 / math.log2(5), 1.0])


def test_reward_specs():
    assert parse_reward("ranking+cf") == ("ranking", "cf")
    for bad in ("", "ndcg", "rule+ranking", "cf+cf"):
        with pytest.raises(ValueError):
            parse_reward(bad)


def test_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)  # unbiased, TRL's torch.std
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + 1e-4)
    advantages = group_advantages(rewards)
    assert torch.allclose(advantages[0], expected[0]) and advantages[1].eq(0).all()


def test_loss_by_hand():
    log_probs = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    advantages = torch.tensor([2.0, -1.0])
    losses, kl = grpo_loss(log_probs, ref, advantages, mask, beta=0.1)
    kl00 = math.exp(-0.5) + 0.5 - 1
    assert torch.allclose(kl, torch.tensor([kl00 / 2, 0.0]))
    assert torch.allclose(losses, torch.tensor([(-(2 - 0.1 * kl00) - 2) / 2, 1.0]))


def test_k3_is_zero_when_policy_equals_reference_and_positive_otherwise():
    log_probs = torch.randn(5, 3)
    assert k3_kl(log_probs, log_probs).eq(0).all()
    assert (k3_kl(log_probs, log_probs + 0.3) > 0).all()


def test_gradient_at_beta_zero_with_one_token_is_reinforces():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    tokens = torch.tensor([1, 3, 3, 0])
    advantages = torch.tensor([1.0, -0.5, 0.25, 2.0])
    log_probs = torch.log_softmax(logits, -1).gather(1, tokens[:, None])  # (4, 1): one completion token each
    losses, _ = grpo_loss(log_probs, log_probs.detach() - 0.2, advantages, torch.ones(4, 1), beta=0.0)
    (grad,) = torch.autograd.grad(losses.mean(), logits)
    plain = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    (reinforce,) = torch.autograd.grad(-(advantages * plain).mean(), logits)
    assert torch.allclose(grad, reinforce)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_backbone("tiny", "fp32", seed=0)
    return model.eval(), tokenizer


PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22]]
GROUPS = [[[30, 31, 2], [30, 32, 2], [40, 2]], [[50, 2], [51, 52, 53, 2]], [[60, 61, 2]]]


@pytest.mark.parametrize("with_lora", [False, True])
def test_shared_prompt_log_probs_equal_one_forward_per_completion(tiny, with_lora):
    model, _ = tiny
    if with_lora:
        model = apply_lora(model, LoraSettings(4, 8, 0.0, ("q_proj", "v_proj")), seed=1)
        with torch.no_grad():  # adapters that act (lora_B starts at zero)
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
    fast, mask = group_log_probs(model, PROMPTS, GROUPS, pad_id=0)
    slow, slow_mask = naive_log_probs(model, PROMPTS, GROUPS)
    assert torch.equal(mask, slow_mask)
    assert torch.allclose(fast * mask, slow * slow_mask, atol=1e-5)
    # gradients agree too (the prompt's pass is in the graph)
    weights = [p for p in model.parameters() if p.requires_grad]
    fast_grad = torch.autograd.grad((fast * mask).sum(), weights)
    slow_grad = torch.autograd.grad((slow * slow_mask).sum(), weights)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fast_grad, slow_grad))
    if with_lora:
        model.unload()
