import numpy as np
import pandas as pd
import pytest
import torch

from recalign.cf.base import build_model, from_pretrained, pad_sequences
from recalign.cf.ncf import MF, NCF, MFConfig, NCFConfig, mean_pool
from recalign.cf.trainer import TrainConfig, train
from recalign.data.dataset import Dataset, item_table
from recalign.data.sequences import examples_from_lists
from recalign.eval import evaluate

N_ITEMS = 12


def randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model.eval()


def random_histories(rng, n, n_items, longest=8):
    return [rng.integers(0, n_items, rng.integers(0, longest + 1)) for _ in range(n)]


def slow_user(table, history):
    """Mean of the context rows of the history's (dataset) item ids, one at a time."""
    total = torch.zeros(table.weight.shape[1], dtype=torch.float64)
    for item in history:
        total += table.weight[int(item) + 1].double()
    return total / max(len(history), 1)


def test_mf_logits_match_a_slow_per_user_per_item_computation():
    rng = np.random.default_rng(0)
    model = randomise(MF(MFConfig(hidden=8, max_len=6), 20)).requires_grad_(False)
    histories = random_histories(rng, 9, 20, longest=10)  # longer than max_len: the most recent 6 count
    scores = model.score(histories)
    for row, history in enumerate(histories):
        user = slow_user(model.context, history[-6:])
        for item in range(20):
            expected = user @ model.item_emb.weight[item + 1].double() + model.item_bias[item + 1].double()
            assert scores[row, item] == pytest.approx(float(expected), abs=1e-5)
    assert torch.equal(model.item_vectors(), model.item_emb.weight[1:])


def slow_ncf_score(model, history, item):
    user_gmf, user_mlp = slow_user(model.user_gmf, history), slow_user(model.user_mlp, history)
    gmf = user_gmf * model.item_gmf.weight[item + 1].double()
    x = torch.cat([user_mlp, model.item_mlp.weight[item + 1].double()])
    for layer in model.mlp:
        x = torch.relu(layer.weight.double() @ x + layer.bias.double())
    return float(model.predict.weight[0].double() @ torch.cat([gmf, x]) + model.predict.bias.double())


def test_ncf_chunked_logits_match_one_shot_and_slow_computations():
    rng = np.random.default_rng(1)
    n_items = 23
    model = randomise(NCF(NCFConfig(hidden=6, max_len=5, mlp_layers=[10, 7, 4]), n_items)).requires_grad_(False)
    histories = random_histories(rng, 7, n_items)
    seq = model.pad(histories)
    with torch.no_grad():
        users = model.user_vectors(seq)
        # one shot: every (user, item) pair through the unsplit MLP at once
        pairs_users = users[:, None, :].expand(-1, n_items, -1).reshape(-1, users.shape[1])
        pairs_items = torch.arange(1, n_items + 1).repeat(len(histories))
        one_shot = model.pair_scores(pairs_users, pairs_items).reshape(len(histories), n_items)
        for chunk in (1, 5, 23, 100):  # chunks dividing the catalogue or not, one item, all at once
            chunked = model.logits_from_users(users, chunk_items=chunk)
            assert torch.allclose(chunked, one_shot, atol=1e-5, rtol=0)
        default = model.logits(seq)
    assert torch.allclose(default, one_shot, atol=1e-5, rtol=0)
    for row, history in enumerate(histories):
        for item in range(n_items):
            assert default[row, item].item() == pytest.approx(slow_ncf_score(model, history[-5:], item), abs=1e-5)
    assert torch.equal(model.item_vectors(), model.item_gmf.weight[1:])


@pytest.mark.parametrize("model_type", ["mf", "ncf"])
def test_pooling_ignores_padding_and_an_empty_history_scores_finitely(model_type):
    model = randomise(build_model(model_type, N_ITEMS, hidden=8, max_len=6), seed=3)
    history = np.array([3, 1, 4, 1])
    seq = pad_sequences([history], 6)
    shorter_pad = pad_sequences([history], 4)  # the same history with less padding
    moved = torch.tensor([[4, 0, 2, 0, 5, 2]])  # padding in the middle of the row
    with torch.no_grad():
        reference = model.logits(seq)
        assert torch.allclose(model.logits(shorter_pad), reference, atol=1e-6)
        assert torch.allclose(model.logits(moved), reference, atol=1e-6)
    # the padding row's content never counts, even if it were not zero
    with torch.no_grad():
        for table in model.context_tables():
            table.weight[0].fill_(100.0)
        assert torch.allclose(model.logits(seq), reference, atol=1e-6)
    empty = model.score([np.array([], dtype=np.int64), history])
    assert np.isfinite(empty).all() and empty.shape == (2, N_ITEMS)
    assert np.allclose(empty[1], reference[0].numpy(), atol=1e-6)
    users = model.user_vectors(model.pad([np.array([], dtype=np.int64)]))
    assert torch.equal(users, torch.zeros_like(users))


def test_prefix_pooling_equals_pooling_each_prefix():
    table = torch.nn.Embedding(10, 3, padding_idx=0)
    seq = torch.tensor([[0, 0, 4, 2, 9], [0, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    prefixes = mean_pool(table, seq, prefixes=True)
    for t in range(seq.shape[1]):
        assert torch.allclose(prefixes[:, t], mean_pool(table, seq[:, :t + 1]), atol=1e-6)
    assert torch.isfinite(prefixes).all()


def set_dataset():
    """Items 0-5 are history items, 6-11 targets: a history made of the set {k, k+1 mod 6} is followed by 6 + k."""
    train, test = [], []
    for k in range(6):
        a, b = k, (k + 1) % 6
        train += [([a, b], 6 + k), ([b, a], 6 + k), ([a, b, a], 6 + k), ([b, b, a], 6 + k)]
        test += [([b, a], 6 + k), ([a, a, b], 6 + k)]

    def table(rows):
        return examples_from_lists(np.arange(len(rows)), [f"u{i}" for i in range(len(rows))], [h for h, _ in rows],
                                   [t for _, t in rows], [0] * len(rows))

    items = pd.DataFrame({"raw_id": [f"i{i}" for i in range(N_ITEMS)], "title": [f"t{i}" for i in range(N_ITEMS)]})
    return Dataset(item_table(items), {"train": table(train), "valid": table([]), "test": table(test)})


@pytest.mark.parametrize("model_type", ["mf", "ncf"])
def test_overfits_a_tiny_dataset_and_round_trips(model_type, tmp_path):
    # 40 epochs of 24 rows: about 2-3 s on an idle CPU (HR@1 = 1 held for training seeds 0-9 of both models)
    dataset = set_dataset()
    model = build_model(model_type, N_ITEMS, hidden=16, max_len=4, dropout=0.0,
                        **({"mlp_layers": [16, 16]} if model_type == "ncf" else {}))
    train(model, dataset, TrainConfig(epochs=40, batch_size=8, lr=0.03, seed=0), out=tmp_path, progress=False)
    loaded = from_pretrained(tmp_path, dataset)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert evaluate(loaded, dataset, "test", ks=(1,)).metrics["HR@1"] == 1.0
    histories = [np.array([0, 1]), np.array([], dtype=np.int64), np.array([5, 3, 2, 2, 1])]
    assert np.array_equal(loaded.score(histories), model.score(histories))


def test_ncf_layers_survive_a_json_round_trip_and_bad_settings_are_refused(tmp_path):
    dataset = set_dataset()
    model = build_model("ncf", N_ITEMS, preset="neumf").attach_catalogue(dataset)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, dataset)
    assert loaded.config.mlp_layers == [64, 32, 16, 8] and loaded.config.hidden == 8
    assert np.array_equal(loaded.score([np.array([1, 2])]), model.score([np.array([1, 2])]))
    with pytest.raises(ValueError, match="mlp_layers"):
        NCFConfig(mlp_layers=[15, 8])
    with pytest.raises(ValueError, match="mlp_layers"):
        NCFConfig(mlp_layers=[16])
    with pytest.raises(ValueError, match="cloze"):
        MF(MFConfig(loss="cloze"), N_ITEMS)


@pytest.mark.parametrize("loss,positions", [("bpr", "all"), ("bce", "last"), ("ce", "all")])
def test_other_losses_and_positions_train(loss, positions):
    for cls, config in ((MF, MFConfig), (NCF, NCFConfig)):
        model = cls(config(hidden=8, max_len=4, loss=loss, positions=positions, mlp_layers=[8, 4])
                    if cls is NCF else config(hidden=8, max_len=4, loss=loss, positions=positions), N_ITEMS)
        seq = pad_sequences([np.array([0, 1, 6]), np.array([3, 9]), np.array([2])], 5)
        value = model.loss(seq, torch.Generator().manual_seed(0))
        value.backward()
        assert torch.isfinite(value) and value.item() > 0
