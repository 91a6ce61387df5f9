import numpy as np
import pytest
import torch
from tests.conftest import N_ITEMS, rule_dataset

from recalign.cf.base import build_model, from_pretrained
from recalign.cf.bert4rec import BERT4Rec, BERT4RecConfig
from recalign.cf.trainer import TrainConfig, train
from recalign.eval import evaluate


def model(**overrides) -> BERT4Rec:
    torch.manual_seed(0)
    values = dict(hidden=16, max_len=8, dropout=0.0, n_blocks=2, n_heads=2) | overrides
    return BERT4Rec(BERT4RecConfig(**values), N_ITEMS)


def rows(n=64, width=9, seed=0) -> torch.Tensor:
    """Left-padded (n, width) rows of shifted ids, of random lengths 1..width."""
    rng = np.random.default_rng(seed)
    out = torch.zeros(n, width, dtype=torch.long)
    for r in range(n):
        length = int(rng.integers(1, width + 1))
        out[r, width - length:] = torch.from_numpy(rng.integers(1, N_ITEMS + 1, length))
    return out


def test_config_refuses_a_next_item_loss_and_the_model_is_registered():
    with pytest.raises(ValueError, match="cloze"):
        BERT4RecConfig(loss="ce")
    built = build_model("bert4rec", N_ITEMS, hidden=16)
    assert isinstance(built, BERT4Rec) and built.item_emb.num_embeddings == N_ITEMS + 2
    assert built.item_vectors().shape == (N_ITEMS, 16)


def test_cloze_masks_only_real_items_at_least_one_per_row_reproducibly():
    net = model(mask_prob=0.2, last_mask_prob=0.3)
    seq = rows(n=500)[:, -8:]
    seq[0] = 0  # an all-padding row gets nothing masked
    seq[1, :-1] = 0  # a row of one item gets it masked
    masked = net.cloze_mask(seq, torch.Generator().manual_seed(3))
    assert not (masked & (seq == 0)).any()
    assert not masked[0].any() and masked[1, -1]
    assert masked[1:].any(dim=1).all()
    assert torch.equal(masked, net.cloze_mask(seq, torch.Generator().manual_seed(3)))
    assert not torch.equal(masked, net.cloze_mask(seq, torch.Generator().manual_seed(4)))
    # some rows hide only their last item, the others hide about mask_prob of their items
    only_last = masked[:, -1] & (masked.sum(dim=1) == 1)
    assert 0.25 < only_last.float().mean() < 0.6
    rate = masked[~only_last].sum() / (seq[~only_last] != 0).sum()
    assert 0.15 < rate < 0.35
    assert model(positions="last").cloze_mask(seq, torch.Generator().manual_seed(3))[1:].sum(dim=1).eq(1).all()


def test_loss_is_finite_and_differentiable():
    net = model()
    net.train()
    loss = net.loss(rows(width=9), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and net.output_bias.grad is not None


def test_padding_does_not_influence_the_scores():
    net = model(max_len=8).eval()
    seq = rows(n=32, width=7)  # histories of 1..7 items, left-padded to 7 < max_len
    with torch.no_grad():
        reference = net.logits(seq)
        # more left padding, up to and beyond max_len (the oldest padding then makes room for [MASK])
        wider = net.logits(torch.nn.functional.pad(seq, (1, 0)))
        widest = net.logits(torch.nn.functional.pad(seq, (5, 0))[:, -8:])
        # less padding: each row cut to its own length via a batch of one row
        single = torch.cat([net.logits(row[row != 0].unsqueeze(0)) for row in seq])
        # whatever sits in the padded positions' embedding row cannot leak in either
        net.item_emb.weight.data[0] = torch.randn(16) * 5
        perturbed = net.logits(seq)
    for other in (wider, widest, single, perturbed):
        torch.testing.assert_close(other, reference, rtol=1e-5, atol=1e-5)
    # the history itself does matter
    assert not torch.allclose(reference[0], net.logits(seq[1:2])[0])


def test_all_padding_rows_give_finite_scores():
    net = model().eval()
    with torch.no_grad():
        assert torch.isfinite(net.encode(torch.zeros(3, 8, dtype=torch.long))).all()
    scores = net.score([np.array([], dtype=np.int64), np.array([3, 4])])
    assert np.isfinite(scores).all() and scores.shape == (2, N_ITEMS)


def test_save_and_load_give_identical_scores(tmp_path):
    dataset = rule_dataset(n_users=4)
    net = model(mask_prob=0.3).attach_catalogue(dataset)
    torch.nn.init.normal_(net.output_bias)
    net.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, dataset)
    assert isinstance(loaded, BERT4Rec) and loaded.config == net.config
    histories = [np.array([1, 2, 3]), np.array([5]), np.arange(12)]
    assert np.array_equal(loaded.score(histories), net.score(histories))


def test_overfits_a_tiny_dataset(tmp_path):
    dataset = rule_dataset(n_users=16, length=10, with_valid=True)
    torch.manual_seed(0)
    net = build_model("bert4rec", dataset.n_items, hidden=64, max_len=10, dropout=0.0, mask_prob=0.3,
                      last_mask_prob=0.5)
    # validation on the test rows keeps the first epoch that ranks every target first (NDCG@10 = 1)
    state = train(net, dataset, TrainConfig(epochs=300, batch_size=4, lr=1e-3, patience=100, seed=0), out=tmp_path,
                  progress=False)
    assert state.best_score == 1.0
    loaded = from_pretrained(tmp_path, dataset)
    assert evaluate(loaded, dataset, "test", ks=(1,)).metrics["HR@1"] == 1.0
