import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from tests.conftest import N_ITEMS, rule_dataset

from recalign.cf.base import build_model, from_pretrained
from recalign.cf.gru4rec import GRU4Rec
from recalign.cf.nextitnet import NextItNet, NextItNetConfig
from recalign.cf.trainer import TrainConfig, train
from recalign.eval import evaluate

MODELS = ("gru4rec", "nextitnet")


def small(model_type, **overrides):
    torch.manual_seed(0)
    return build_model(model_type, N_ITEMS, **{"hidden": 16, "max_len": 10, **overrides})


def test_build_model_gives_the_registered_classes():
    assert isinstance(build_model("gru4rec", N_ITEMS), GRU4Rec)
    assert isinstance(build_model("nextitnet", N_ITEMS), NextItNet)
    with pytest.raises(ValueError, match="no setting"):
        build_model("gru4rec", N_ITEMS, dilations=(1,))


@pytest.mark.parametrize("model_type", MODELS)
def test_states_are_causal(model_type):
    model = small(model_type, dropout=0.3).eval()
    generator = torch.Generator().manual_seed(1)
    seq = torch.randint(1, N_ITEMS + 1, (4, 10), generator=generator)
    seq[1, :3] = 0  # left padding on some rows
    seq[3, :7] = 0
    with torch.no_grad():
        states = model.encode(seq)
        assert states.shape == (4, 10, 16)
        for t in range(9):
            changed = seq.clone()
            real = seq[:, t + 1] != 0
            changed[real, t + 1] = seq[real, t + 1] % N_ITEMS + 1  # another item where there was one
            after = model.encode(changed)
            assert torch.equal(after[:, :t + 1], states[:, :t + 1]), t
            assert not torch.isclose(after[real, t + 1], states[real, t + 1]).all(-1).any(), t


@pytest.mark.parametrize("model_type", MODELS)
def test_states_do_not_depend_on_the_padded_length(model_type):
    model = small(model_type).eval()
    histories = [np.array([3, 1, 4]), np.array([1, 5, 9, 2, 6]), np.array([], dtype=np.int64)]
    with torch.no_grad():
        short = model.encode(model.pad(histories)[:, -6:])
        long = model.encode(model.pad(histories))
    torch.testing.assert_close(short, long[:, -6:])
    # an empty history and every padded position share one state (the dense layer's bias)
    torch.testing.assert_close(long[2], long[0, :1].expand(10, -1))


@pytest.mark.parametrize("model_type", MODELS)
def test_item_vectors_exclude_the_padding_row(model_type):
    model = small(model_type)
    assert model.item_vectors().shape == (N_ITEMS, 16)
    assert torch.equal(model.item_vectors(), model.item_embedding.weight[1:])
    assert not model.item_embedding.weight[0].any()


@pytest.mark.parametrize("model_type,epochs,lr", [("gru4rec", 40, 1e-2), ("nextitnet", 40, 1e-2)])
def test_overfits_a_tiny_deterministic_dataset(tmp_path, model_type, epochs, lr):
    dataset = rule_dataset()
    model = small(model_type, hidden=32, dropout=0.0)
    train(model, dataset, TrainConfig(epochs=epochs, lr=lr, batch_size=64, patience=epochs), out=tmp_path,
          progress=False)
    loaded = from_pretrained(tmp_path, dataset)
    assert evaluate(loaded, dataset, "test", ks=(1,)).metrics["HR@1"] == 1.0


@pytest.mark.parametrize("model_type", MODELS)
def test_save_and_load_give_identical_scores(tmp_path, model_type):
    dataset = rule_dataset(n_users=4)
    model = small(model_type, n_layers=2) if model_type == "gru4rec" else small(model_type, dilations=[1, 3])
    model.attach_catalogue(dataset)
    with torch.no_grad():  # move every parameter off its initial value
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, dataset)
    assert type(loaded) is type(model) and loaded.config == model.config
    histories = [np.array([0, 5, 7]), np.arange(12), np.array([], dtype=np.int64)]
    assert np.array_equal(loaded.score(histories), model.score(histories))


def test_nextitnet_dilations_survive_json():
    config = NextItNetConfig(dilations=[1, 2])
    assert config.dilations == (1, 2)
    assert NextItNetConfig(**json.loads(json.dumps(asdict(config)))) == config
    assert NextItNetConfig(dilations="1,4").dilations == (1, 4)
    with pytest.raises(ValueError):
        NextItNetConfig(dilations=[0])
