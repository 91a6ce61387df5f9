"""Semantic IDs: the quantisers, collision handling, statistics and importing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recalign.index.rqvae import QuantizerConfig, rq_kmeans, train_rqvae
from recalign.index.sid import (
    SemanticIDs,
    build_sids,
    read_index_json,
    resolve_collisions,
    sid_index,
    sid_stats,
    sid_tokens,
)

SMALL = dict(levels=3, codebook_size=8, latent_dim=8, hidden=(32, 16), batch_size=256, check_every=25)


def clustered(n=400, clusters=12, dim=24, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def test_rqvae_reconstruction_improves_and_every_level_uses_several_codes():
    x = clustered()
    model, log = train_rqvae(x, QuantizerConfig(epochs=150, **SMALL))
    assert log[-1]["reconstruction"] < 0.5 * log[0]["reconstruction"]
    codes, _ = model.encode(torch.from_numpy(x))
    for level in range(3):
        assert len(np.unique(codes[:, level].numpy())) > 1
    # the kept weights are the lowest-collision check
    rate = 1 - len(np.unique(codes.numpy(), axis=0)) / len(x)
    assert rate == pytest.approx(min(row["collision_rate"] for row in log))


def test_rqkmeans_codes_are_nearest_centroids_of_the_residuals():
    x = clustered(n=200)
    codes, last, codebook = rq_kmeans(x, QuantizerConfig(method="rqkmeans", **SMALL))
    assert codes.shape == (200, 3) and codes.max() < 8
    distances = np.linalg.norm(last[:, None, :] - codebook[None], axis=-1)
    assert (distances.argmin(axis=1) == codes[:, -1]).mean() > 0.95  # k-means labels: nearest at convergence


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_collision_modes(data):
    n = data.draw(st.integers(2, 40))
    k = data.draw(st.integers(2, 6))
    codes = np.array(data.draw(st.lists(st.lists(st.integers(0, k - 1), min_size=3, max_size=3), min_size=n,
                                        max_size=n)))
    rng = np.random.default_rng(n)
    residual, codebook = rng.normal(size=(n, 4)), rng.normal(size=(k, 4))
    kept, _ = resolve_collisions(codes, "keep")
    assert [[int(t[3:-1]) for t in sid] for sid in kept] == codes.tolist()
    for mode in ("extra_level", "balance"):
        sids, done = resolve_collisions(codes, mode, residual, codebook)
        assert len({tuple(s) for s in sids}) == n  # unique when asked
        assert all(s[:2] == kept[i][:2] for i, s in enumerate(sids))  # only the last level (and a new one) change
    sids, done = resolve_collisions(codes, "balance", residual, codebook)
    groups = {}
    for item, row in enumerate(map(tuple, codes.tolist())):
        groups.setdefault(row, []).append(item)
    for members in groups.values():
        if len(members) > 1:  # the member closest to the shared code keeps it
            own = [np.linalg.norm(residual[m] - codebook[codes[m, -1]]) for m in members]
            keeper = members[int(np.argmin(own))]
            assert sids[keeper][2] == kept[keeper][2]
    final = [int(s[2][3:-1]) for s in sids]
    for item, (old, new) in enumerate(zip(codes[:, 2], final)):
        free = set(range(k)) - {final[j] for j in range(n) if tuple(codes[j, :2]) == tuple(codes[item, :2])}
        if new != old and free:  # a moved item took the nearest code that was free when it moved
            distance = np.linalg.norm(residual[item] - codebook, axis=1)
            assert distance[new] <= distance[sorted(free)].min()


def test_stats_by_hand():
    sids = [["<a_0>", "<b_0>"], ["<a_0>", "<b_0>"], ["<a_0>", "<b_1>"], ["<a_1>", "<b_1>"]]
    stats = sid_stats(sids, codebook_size=4, quantised_levels=2)
    assert (stats.items, stats.distinct, stats.colliding_groups, stats.colliding_items) == (4, 3, 1, 2)
    assert stats.collision_rate == pytest.approx(0.25)
    assert stats.tokens == 4
    a, b = stats.levels
    assert (a.codes_used, a.max_items_per_code, a.codebook_size) == (2, 3, 4)
    assert a.perplexity == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))
    assert b.perplexity == pytest.approx(2.0)
    assert sid_tokens(sids) == ["<a_0>", "<a_1>", "<b_0>", "<b_1>"]


def test_built_sids_save_and_reload(tmp_path):
    x = clustered(n=120)
    raw = [f"r{i}" for i in range(120)]
    sids, log = build_sids(x, raw, QuantizerConfig(epochs=30, **SMALL), collisions="extra_level")
    assert len({tuple(s) for s in sids.sids}) == 120 and log
    sids.save_pretrained(tmp_path / "s")
    again = SemanticIDs.from_pretrained(tmp_path / "s")
    assert again.sids == sids.sids and again.raw_ids == raw
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["stats"]["collision_rate"] == 0 and config["quantizer"]["codebook_size"] == 8


def test_bad_index_files_are_named(tmp_path):
    path = tmp_path / "x.index.json"
    path.write_text(json.dumps({"0": ["<a_1>", "b_2"]}))
    with pytest.raises(ValueError, match=r"x.index.json: item '0'"):
        read_index_json(path)
    path.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_index_json(path)


def test_sid_index_needs_the_tokens_in_the_tokenizer():
    class Vocab:
        eos_token_id = 0
        name_or_path = "v"

        def get_vocab(self):
            return {"<a_0>": 5, "<b_0>": 6, "<b_1>": 7}

    index = sid_index([["<a_0>", "<b_0>"], ["<a_0>", "<b_1>"]], Vocab())
    assert index.kind == "sid" and index.tokens(1) == [5, 7, 0]
    with pytest.raises(ValueError, match="not in the tokenizer"):
        sid_index([["<a_9>"]], Vocab())


# --- the RQ-VAE's quantiser: loss, straight-through estimator, k-means initialisation, balancing -----------------

def two_level_quantizer(beta=0.25):
    from recalign.index.rqvae import ResidualQuantizer

    quantizer = ResidualQuantizer(levels=2, codebook_size=3, dim=2, beta=beta)
    quantizer.codebooks.data = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]],
                                             [[0.0, 0.0], [1.0, 0.0], [0.0, -1.0]]])
    return quantizer


def test_residual_quantisation_by_hand():
    latent = torch.tensor([[4.8, 0.2], [0.3, 3.2]])
    out, codes, loss, last = two_level_quantizer()(latent)
    # level 0: nearest codes 1 and 2, residuals (0.8, 0.2), (0.3, -0.8); level 1: (1, 0) and (0, -1)
    assert codes.tolist() == [[1, 1], [2, 2]]
    torch.testing.assert_close(last, torch.tensor([[0.8, 0.2], [0.3, -0.8]]))
    torch.testing.assert_close(out, torch.tensor([[5.0, 0.0], [0.0, 3.0]]))  # the sum of the chosen codewords
    level0 = ((latent - torch.tensor([[4.0, 0.0], [0.0, 4.0]])) ** 2).mean()
    level1 = ((last - torch.tensor([[1.0, 0.0], [0.0, -1.0]])) ** 2).mean()
    torch.testing.assert_close(loss, 1.25 * (level0 + level1) / 2)  # (codebook + 0.25 commitment), mean of levels


def test_rq_loss_moves_codewords_at_weight_one_and_the_encoder_at_beta():
    latent = torch.tensor([[4.8, 0.2], [0.3, 3.2]], requires_grad=True)
    quantizer = two_level_quantizer(beta=0.25)
    _, codes, loss, _ = quantizer(latent)
    loss.backward()
    words = quantizer.codebooks.detach()
    residual0 = latent.detach()
    word0 = words[0][codes[:, 0]]
    residual1 = residual0 - word0
    word1 = words[1][codes[:, 1]]
    n = latent.numel()
    # d/de of ||sg(r) - e||^2 / n, halved by the mean over two levels: the codebook term carries weight 1
    expected_codebook = torch.zeros_like(words)
    expected_codebook[0][codes[:, 0]] += (word0 - residual0) * 2 / n / 2
    expected_codebook[1][codes[:, 1]] += (word1 - residual1) * 2 / n / 2
    torch.testing.assert_close(quantizer.codebooks.grad, expected_codebook)
    # the encoder gets beta of both levels' commitment (level 1's residual subtracts a detached codeword)
    expected_latent = 0.25 * ((residual0 - word0) + (residual1 - word1)) * 2 / n / 2
    torch.testing.assert_close(latent.grad, expected_latent)


def test_the_straight_through_estimator_passes_the_decoders_gradient_unchanged():
    latent = torch.tensor([[4.8, 0.2], [0.3, 3.2]], requires_grad=True)
    out, _, _, _ = two_level_quantizer()(latent)
    weights = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    (out * weights).sum().backward()
    torch.testing.assert_close(latent.grad, weights)


def test_kmeans_initialisation_fits_each_level_on_the_previous_levels_residuals():
    from recalign.index.rqvae import ResidualQuantizer, kmeans

    latent = torch.from_numpy(clustered(n=120, clusters=5, dim=4))
    quantizer = ResidualQuantizer(levels=2, codebook_size=5, dim=4, beta=0.25)
    quantizer.init_from(latent, seed=3)
    first, labels = kmeans(latent.numpy(), 5, 3)
    second, _ = kmeans(latent.numpy() - first[labels], 5, 4)
    np.testing.assert_allclose(quantizer.codebooks[0].detach().numpy(), first)
    np.testing.assert_allclose(quantizer.codebooks[1].detach().numpy(), second)
    assert bool(quantizer.initialised)


def test_balance_moves_the_farther_member_to_the_nearest_free_code():
    codes = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
    codebook = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [9.0, 0.0]])
    residual = np.array([[0.1, 0.0], [1.6, 0.0], [1.0, 0.0], [0.0, 0.0]])
    sids, done = resolve_collisions(codes, "balance", residual, codebook)
    # item 1 is farther from code 0 than item 0; code 1 is taken under (0, 0), so the nearest free one is 2, not 3
    assert [s[2] for s in sids] == ["<c_0>", "<c_2>", "<c_1>", "<c_0>"]
    assert done["moved"] == 1 and all(len(s) == 3 for s in sids)
