"""TCA4Rec: the vectorised soft labels against the reference's per-label loop, the loss against its formula written
densely, the alpha = 0 reductions, the loss hook with real CF models, and the faithful label mask."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_catalogue

from recalign.align.tca import (
    ReferenceTrie,
    SoftLabels,
    TCAConfig,
    TCALoss,
    faithful_label_mask,
    reference_soft_labels,
    soft_labels,
    tca_loss,
)
from recalign.cf import build_model
from recalign.index import ItemIndex
from recalign.llm.train import SFTExample, collate

EOS = 2
VOCAB = 9  # tokens 3..8 name items; 0, 1 are prompt tokens, 2 is EOS




def every_label(index: ItemIndex, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(label_example, label_depth) for every token of every target's identifier, EOS included."""
    pairs = [(b, d) for b, t in enumerate(targets.tolist()) for d in range(int(index.item_length[t]))]
    return torch.tensor([b for b, _ in pairs]), torch.tensor([d for _, d in pairs])


def as_dicts(labels: SoftLabels) -> list[dict[int, float]]:
    out: list[dict[int, float]] = [{} for _ in range(labels.n_labels)]
    for label, token, q in zip(labels.pair_label.tolist(), labels.tokens.tolist(), labels.q.double().tolist()):
        assert token not in out[label]
        out[label][token] = q
    return out


def assert_same_q(got: list[dict[int, float]], expected: list[dict[int, float]], atol: float = 1e-6) -> None:
    assert len(got) == len(expected)
    for n, (g, e) in enumerate(zip(got, expected)):
        assert sorted(g) == sorted(e), n
        for token in e:
            assert abs(g[token] - e[token]) <= atol, (n, token, g[token], e[token])


# ----- Collaborative Tokenizer --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), n_items=st.integers(1, 30), batch=st.integers(1, 4),
       spread=st.sampled_from([0.5, 3.0, 12.0, 30.0]), beta=st.sampled_from([0.5, 1.0, 2.0]))
def test_soft_labels_match_the_reference_loop_and_factorise_the_cf_softmax(seed, n_items, batch, spread, beta):
    rng = random.Random(seed)
    catalogue = random_catalogue(rng, n_items, n_tokens=VOCAB - 3, longest=4)
    index = ItemIndex.from_sequences(catalogue, EOS)
    generator = torch.Generator().manual_seed(seed)
    cf_logits = torch.randn(batch, n_items, generator=generator) * spread  # spread 12: the local pass is needed
    targets = torch.randint(0, n_items, (batch,), generator=generator)
    example, depth = every_label(index, targets)

    labels = soft_labels(cf_logits, index, example, depth, targets, beta)
    assert_same_q(as_dicts(labels), reference_soft_labels(cf_logits, ReferenceTrie.from_index(index), example,
                                                            depth, targets, beta))
    torch.testing.assert_close(labels.per_label_sum(labels.q.double()), torch.ones(len(example), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    gold = [index.tokens(targets[b])[d] for b, d in zip(example.tolist(), depth.tolist())]
    assert labels.gold_tokens.tolist() == gold

    # along a whole identifier the q multiply to the CF softmax mass of the items sharing it (q is accurate in
    # absolute terms: a mass ~1e-20 may come out as 0, so the log-space check is for the masses that matter)
    log_path = torch.zeros(batch, dtype=torch.float64).index_add_(
        0, example, labels.log_q[labels.gold_pair].double())
    probabilities = torch.softmax(cf_logits.double() / beta, 1)
    same = [[catalogue[i] == catalogue[t] for i in range(n_items)] for t in targets.tolist()]
    mass = (probabilities * torch.tensor(same, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(log_path.exp(), mass, rtol=0, atol=1e-6)
    kept = mass > 1e-6
    torch.testing.assert_close(log_path[kept], mass[kept].log(), rtol=1e-6, atol=1e-5)


def test_items_sharing_an_identifier_are_separate_mass():
    index = ItemIndex.from_sequences([[3, 4], [3, 4], [3, 5]], EOS)
    cf_logits = torch.tensor([[0.0, 0.0, 0.0]])
    labels = soft_labels(cf_logits, index, torch.tensor([0]), torch.tensor([1]), torch.tensor([0]))
    assert as_dicts(labels)[0] == pytest.approx({4: 2 / 3, 5: 1 / 3})


def test_a_node_far_below_the_user_max_is_computed_from_its_own_items():
    # Sorted order puts [3, ...] first: items 1 and 2 hold ~1e-13 of the mass after a prefix sum of ~1, so a
    # difference of the global prefix sums keeps only ~3 digits of their split.
    index = ItemIndex.from_sequences([[3], [4, 5], [4, 6]], EOS)
    cf_logits = torch.tensor([[0.0, -30.0, -31.0]])
    labels = soft_labels(cf_logits, index, torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))
    expected = 1 / (1 + math.exp(-1))
    assert as_dicts(labels)[0] == pytest.approx({5: expected, 6: 1 - expected}, abs=1e-7)


def test_underflow_logits_spanning_2000_units():
    # Node [4] holds items ~1500 units below the first user's best, node [5] items ~2000 below the second's:
    # their Z underflows to 0 in a global float64 prefix sum (exp(-745) is the floor).
    catalogue = [[3, 4], [3, 5], [4, 4], [4, 5, 6], [4, 5, 7], [5], [5, 3]]
    index = ItemIndex.from_sequences(catalogue, EOS)
    cf_logits = torch.tensor([[0.0, -1.0, -1500.0, -1501.0, -1503.0, -2000.0, -1999.0],
                              [-2000.0, 0.0, -3.0, -1000.0, -999.0, -1999.5, -2000.0]])
    targets = torch.tensor([3, 6])
    example, depth = every_label(index, targets)
    labels = soft_labels(cf_logits, index, example, depth, targets)
    expected = reference_soft_labels(cf_logits, ReferenceTrie.from_index(index), example, depth, targets)
    assert_same_q(as_dicts(labels), expected)
    assert not labels.log_q.isnan().any()
    torch.testing.assert_close(labels.per_label_sum(labels.q.double()), torch.ones(len(example), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    # below the root each step is a softmax among the node's own items: finite, and exact in log space too
    gold_log_q = labels.log_q[labels.gold_pair]
    assert torch.isfinite(gold_log_q[depth > 0]).all()
    assert gold_log_q[(example == 0) & (depth == 1)].item() == pytest.approx(
        math.log((math.exp(-1) + math.exp(-3)) / (1 + math.exp(-1) + math.exp(-3))), abs=1e-6)
    assert gold_log_q[(example == 1) & (depth == 1)].item() == pytest.approx(-math.log1p(math.exp(0.5)), abs=1e-6)


def test_labels_beyond_the_identifier_are_refused():
    index = ItemIndex.from_sequences([[3, 4], [5]], EOS)
    with pytest.raises(ValueError, match="beyond"):
        soft_labels(torch.zeros(1, 2), index, torch.tensor([0]), torch.tensor([2]), torch.tensor([1]))


# ----- Soft Label Alignment -----------------------------------------------------------------------------------


def tiny_problem(seed: int = 0):
    """Soft labels (float64 q) at every label of a few targets, and random LLM logits over VOCAB tokens."""
    rng = random.Random(seed)
    catalogue = random_catalogue(rng, 12, n_tokens=VOCAB - 3, longest=4)
    catalogue += [[3, 4, 5], [3, 4, 6], [3, 4, 6]]  # deep nodes with one child (MSL's zero-loss positions)
    index = ItemIndex.from_sequences(catalogue, EOS)
    generator = torch.Generator().manual_seed(seed)
    targets = torch.tensor([len(catalogue) - 3, 0, len(catalogue) - 1, 5])
    cf_logits = torch.randn(len(targets), len(catalogue), generator=generator) * 2
    example, depth = every_label(index, targets)
    labels = soft_labels(cf_logits, index, example, depth, targets)
    labels = replace(labels, log_q=labels.log_q.double())  # so the comparison below is to float64 rounding
    gold = labels.gold_tokens
    logits = torch.randn(len(example), VOCAB, generator=generator, dtype=torch.float64) * 3
    return labels, gold, logits


def naive_loss(logits: torch.Tensor, gold: torch.Tensor, labels: SoftLabels, config: TCAConfig) -> torch.Tensor:
    """The formula with dense vocabulary-long vectors."""
    q = torch.zeros_like(logits).index_put((labels.pair_label, labels.tokens), labels.q, accumulate=True)
    allowed = torch.zeros_like(logits, dtype=torch.bool).index_put((labels.pair_label, labels.tokens),
                                                                   torch.tensor(True))
    y = (1 - config.alpha) * F.one_hot(gold, logits.shape[1]).double() + config.alpha * q
    scaled = logits / config.temperature
    if config.msl:
        scaled = scaled.masked_fill(~allowed, -math.inf)
    p = torch.softmax(scaled, 1)
    if config.objective == "reference":
        return -(p * y).sum(1).log()
    return -torch.where(y > 0, y * torch.log_softmax(scaled, 1), 0.0).sum(1)


@pytest.mark.parametrize("objective", ["reference", "soft_ce"])
@pytest.mark.parametrize("msl", [False, True])
@pytest.mark.parametrize("alpha", [0.1, 0.7, 1.0])
@pytest.mark.parametrize("tau", [1.0, 4.5])
def test_loss_and_gradient_match_the_dense_formula(objective, msl, alpha, tau):
    labels, gold, logits = tiny_problem()
    config = TCAConfig(alpha=alpha, tau=tau, msl=msl, objective=objective)
    ours = logits.clone().requires_grad_(True)
    dense = logits.clone().requires_grad_(True)
    loss = tca_loss(ours, gold, labels, config)
    expected = naive_loss(dense, gold, labels, config)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    weights = torch.linspace(0.5, 1.5, len(gold), dtype=torch.float64)  # any direction, not just the sum
    (loss * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(ours.grad, dense.grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("objective", ["reference", "soft_ce"])
def test_alpha_zero_is_exactly_cross_entropy(objective):
    labels, gold, logits = tiny_problem(1)
    labels, logits = replace(labels, log_q=labels.log_q.float()), logits.float()
    for tau in (1.0, 4.5):  # tau only acts with MSL
        loss = tca_loss(logits, gold, labels, TCAConfig(alpha=0.0, tau=tau, objective=objective))
        assert torch.equal(loss, F.cross_entropy(logits, gold, reduction="none"))


@pytest.mark.parametrize("objective", ["reference", "soft_ce"])
def test_alpha_zero_with_msl_is_the_masked_softmax_loss(objective):
    labels, gold, logits = tiny_problem(2)
    allowed = torch.zeros_like(logits, dtype=torch.bool).index_put((labels.pair_label, labels.tokens),
                                                                   torch.tensor(True))
    ours, dense = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    loss = tca_loss(ours, gold, labels, TCAConfig(alpha=0.0, tau=4.5, msl=True, objective=objective))
    msl = F.cross_entropy((dense / 4.5).masked_fill(~allowed, -math.inf), gold, reduction="none")
    torch.testing.assert_close(loss, msl, rtol=1e-12, atol=1e-12)
    loss.sum().backward()
    msl.sum().backward()
    torch.testing.assert_close(ours.grad, dense.grad, rtol=1e-12, atol=1e-12)


def test_msl_single_child_positions_give_exactly_zero_and_still_count():
    labels, gold, logits = tiny_problem(3)
    single = labels.n_children == 1
    assert single.any() and (~single).any()
    for objective in ("reference", "soft_ce"):
        loss = tca_loss(logits, gold, labels, TCAConfig(alpha=0.3, msl=True, objective=objective))
        assert loss.shape == gold.shape  # one loss per label: these count in the step's mean
        assert (loss[single] == 0).all()
        assert (loss[~single] > 0).all()


def test_config_is_validated():
    for bad in (dict(alpha=-0.1), dict(alpha=1.5), dict(beta=0.0), dict(tau=-1.0), dict(objective="ce")):
        with pytest.raises(ValueError):
            TCAConfig(**bad)


# ----- the loss hook with real CF models ----------------------------------------------------------------------


def hook_batch(index: ItemIndex, config: TCAConfig, targets: list[int], histories: list[tuple[int, ...]]):
    examples = [SFTExample(prompt_ids=[0, 1, 1], target_ids=index.tokens(t), item=t, history=h,
                           label_mask=config.label_mask(index.tokens(t))) for t, h in zip(targets, histories)]
    return collate(examples, pad_id=0)


@pytest.mark.parametrize("model_type", ["sasrec", "gru4rec"])
@pytest.mark.parametrize("faithful", [False, True])
def test_tca_loss_hook_with_cf_models(model_type, faithful):
    torch.manual_seed(0)
    catalogue = random_catalogue(random.Random(7), 14, n_tokens=VOCAB - 3, longest=4) + [[3, 4, 5, 6]]
    index = ItemIndex.from_sequences(catalogue, EOS)
    model = build_model(model_type, len(catalogue), hidden=16, max_len=4).train()
    config = TCAConfig(alpha=0.5, msl=True, faithful_mask=faithful)
    hook = TCALoss(model, index, config)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    histories = [(1, 2, 3, 4, 5), (), (7,), (0, 13, 13)]
    batch = hook_batch(index, config, [14, 3, 0, 14], histories)
    logits = torch.randn(len(batch.label_tokens), VOCAB, requires_grad=True)
    model.train()  # the hook must score in eval mode regardless
    loss = hook(logits, batch)
    assert loss.shape == batch.label_tokens.shape and torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())

    scores = torch.from_numpy(model.score(histories))  # the model's own full-catalogue scoring, in eval mode
    labels = hook.soft_labels(batch)
    assert_same_q(as_dicts(labels), reference_soft_labels(
        scores, ReferenceTrie.from_index(index), batch.label_example, batch.label_depth, batch.items))
    expected = tca_loss(logits, batch.label_tokens, soft_labels(scores, index, batch.label_example,
                                                                batch.label_depth, batch.items), config)
    torch.testing.assert_close(loss, expected)


def test_tca_loss_hook_refuses_mismatches():
    index = ItemIndex.from_sequences([[3, 4], [5, 6], [6, 3]], EOS)
    with pytest.raises(ValueError, match="items"):
        TCALoss(build_model("gru4rec", 4, hidden=8, max_len=3), index)
    hook = TCALoss(build_model("gru4rec", 3, hidden=8, max_len=3), index)
    batch = hook_batch(index, hook.config, [0, 2], [(1,), (2,)])
    wrong = replace(batch, items=torch.tensor([0, 1]))  # item 1's identifier is not the labels'
    with pytest.raises(ValueError, match="identifiers"):
        hook(torch.zeros(len(batch.label_tokens), VOCAB), wrong)


# ----- the faithful label mask --------------------------------------------------------------------------------


def test_faithful_mask_trains_what_the_reference_trains():
    # the reference trains title tokens 1..L-1 (never the last one) and has no EOS label
    assert faithful_label_mask([7, 8, 6, EOS]) == [True, True, False, False]
    assert faithful_label_mask([7, 8, EOS]) == [True, False, False]
    assert faithful_label_mask([7, EOS]) == [False, False]  # a one-token title contributes nothing
    assert faithful_label_mask([EOS]) == [False]
    assert TCAConfig().label_mask([7, 8, EOS]) == [True, True, True]  # fixed: every token and EOS
    assert TCAConfig(faithful_mask=True).label_mask([7, 8, EOS]) == [True, False, False]

    index = ItemIndex.from_sequences([[3, 4, 5], [6]], EOS)
    batch = hook_batch(index, TCAConfig(faithful_mask=True), [0, 1], [(), ()])
    # positions prompt_end + d predict t_{d+1} for d = 0..L-2, as the reference's bos_idx + d
    assert batch.label_rows.tolist() == [0, 0]
    assert batch.label_depth.tolist() == [0, 1]
    assert batch.label_tokens.tolist() == [3, 4]
    assert batch.label_cols.tolist() == [2, 3]


def test_rows_without_a_target_item_get_plain_cross_entropy():
    """A semantic-ID recommender's auxiliary tasks (item -1) mixed with identifier rows: the former get plain
    cross-entropy, the latter exactly what a batch of them alone gets."""
    torch.manual_seed(1)
    catalogue = random_catalogue(random.Random(3), 10, n_tokens=VOCAB - 3, longest=4)
    index = ItemIndex.from_sequences(catalogue, EOS)
    hook = TCALoss(build_model("sasrec", len(catalogue), hidden=16, max_len=4), index, TCAConfig(alpha=0.5))
    aligned = [SFTExample([0, 1, 1], index.tokens(t), item=t, history=h) for t, h in ((2, (1, 3)), (7, (4,)))]
    auxiliary = [SFTExample([0, 2], [5, 6, EOS]), SFTExample([1, 1, 1], [4, EOS])]
    mixed = collate([auxiliary[0], aligned[0], auxiliary[1], aligned[1]], pad_id=0)
    logits = torch.randn(len(mixed.label_tokens), VOCAB)
    loss = hook(logits, mixed)
    is_aligned = mixed.items[mixed.label_example] >= 0
    torch.testing.assert_close(loss[~is_aligned], F.cross_entropy(logits[~is_aligned],
                                                                  mixed.label_tokens[~is_aligned], reduction="none"))
    alone = collate(aligned, pad_id=0)
    torch.testing.assert_close(loss[is_aligned], hook(logits[is_aligned], alone))
