import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import N_ITEMS, rule_dataset
from typer.testing import CliRunner

from recalign.cf import CatalogueMismatch, TrainConfig, TrainingDiverged, build_model, from_pretrained, train
from recalign.cf.trainer import training_rows
from recalign.cli import app
from recalign.data.dataset import Dataset, item_table
from recalign.eval import evaluate
from recalign.eval.metrics import ranking_metrics, read_ranks


def test_tca4rec_preset_matches_the_reference_architecture():
    model = build_model("sasrec", 100, preset="tca4rec")
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes["item_emb.weight"] == (101, 64) and shapes["pos_emb.weight"] == (10, 64)
    assert shapes["attention_layers.1.in_proj_weight"] == (192, 64)
    assert "attention_layers.2.in_proj_weight" not in shapes  # two blocks
    assert shapes["forward_layers.0.conv1.weight"] == (64, 64, 1) and shapes["last_layernorm.weight"] == (64,)
    assert model.attention_layers[0].num_heads == 1 and model.last_layernorm.eps == 1e-8
    assert (model.config.loss, model.config.positions, model.config.dropout) == ("bce", "last", 0.5)

    model.eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 9, 2]])
    seen = {}
    model.attention_layernorms[0].register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    states = model.encode(seq)
    keep = (seq != 0).unsqueeze(-1)
    expected = (model.item_emb(seq) * math.sqrt(64) + model.pos_emb.weight) * keep  # sqrt(d) scale, pads zeroed
    torch.testing.assert_close(seen["x"], expected)
    user = model.user_vectors(seq)
    torch.testing.assert_close(user, states[:, -1])  # the last position is the user
    torch.testing.assert_close(model.logits(seq), user @ model.item_emb.weight[1:].T)


def test_allmrec_preset():
    model = build_model("sasrec", 30, preset="allmrec")
    assert model.item_emb.weight.shape == (31, 50) and model.pos_emb.weight.shape == (50, 50)
    assert (model.config.loss, model.config.positions) == ("bce", "all")


def test_unknown_presets_and_settings_are_refused():
    with pytest.raises(ValueError, match="no preset"):
        build_model("sasrec", 10, preset="bigrec")
    with pytest.raises(ValueError, match="no setting"):
        build_model("sasrec", 10, kernel_size=3)
    with pytest.raises(ValueError, match="unknown CF model"):
        build_model("lightgcn", 10)


def small_sasrec(**overrides):
    torch.manual_seed(0)
    return build_model("sasrec", N_ITEMS, **{"hidden": 32, "max_len": 10, "dropout": 0.0, **overrides})


def test_sasrec_overfits_a_tiny_dataset_and_round_trips(tmp_path):
    dataset = rule_dataset()
    train(small_sasrec(), dataset, TrainConfig(epochs=40, lr=1e-2, batch_size=16), tmp_path, progress=False)
    model = from_pretrained(tmp_path, dataset)
    assert evaluate(model, dataset, "test", ks=(1,)).metrics["HR@1"] == 1.0
    again = from_pretrained(tmp_path, dataset)
    histories = [np.array([1, 2, 3]), np.array([4])]
    assert np.array_equal(model.score(histories), again.score(histories))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sasrec" and config["n_items"] == N_ITEMS
    assert json.loads((tmp_path / "item_raw_ids.json").read_text()) == [f"i{i}" for i in range(N_ITEMS)]


def test_a_model_is_refused_against_another_catalogue(tmp_path):
    dataset = rule_dataset()
    model = small_sasrec().attach_catalogue(dataset)
    model.save_pretrained(tmp_path)
    renamed = pd.DataFrame({"raw_id": [f"j{i}" for i in range(N_ITEMS)], "title": ["t"] * N_ITEMS})
    other = Dataset(item_table(renamed), dataset.examples)
    with pytest.raises(CatalogueMismatch, match="trained on a catalogue of 12 items"):
        from_pretrained(tmp_path, other)
    with pytest.raises(CatalogueMismatch, match="the model has 12 items, the dataset 11"):
        small_sasrec().attach_catalogue(Dataset(item_table(renamed.iloc[:11]), {}))


def test_resume_continues_to_the_same_result_as_an_uninterrupted_run(tmp_path):
    dataset = rule_dataset(with_valid=True)
    config = dict(lr=1e-2, batch_size=16, patience=50, seed=7)
    straight = tmp_path / "straight"
    train(small_sasrec(dropout=0.3), dataset, TrainConfig(epochs=4, **config), straight, progress=False)
    interrupted = tmp_path / "interrupted"
    train(small_sasrec(dropout=0.3), dataset, TrainConfig(epochs=2, **config), interrupted, progress=False)
    state = train(small_sasrec(dropout=0.3), dataset, TrainConfig(epochs=4, **config), interrupted, resume=True,
                  progress=False)
    assert state.epoch == 4
    for name in ("checkpoint/model.safetensors", "model.safetensors"):
        a, b = load_file(straight / name), load_file(interrupted / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    log_a = pd.read_csv(straight / "train_log.csv").drop(columns="seconds")
    log_b = pd.read_csv(interrupted / "train_log.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(log_a, log_b)


def test_early_stopping_waits_for_patience_epochs(tmp_path):
    dataset = rule_dataset(with_valid=True)
    state = train(small_sasrec(), dataset, TrainConfig(epochs=30, lr=0.0, patience=3), tmp_path, progress=False)
    assert (state.epoch, state.best_epoch) == (4, 1)  # lr 0: epoch 1 is never beaten


def test_rows_that_are_prefixes_of_the_next_row_collapse_for_all_position_training():
    dataset = rule_dataset(n_users=2, length=5)
    everything = training_rows(dataset, max_len=10, collapse_prefixes=False)
    collapsed = training_rows(dataset, max_len=10, collapse_prefixes=True)
    assert len(everything) == 6 and len(collapsed) == 2  # each user's 3 prefixes collapse into the longest
    assert torch.equal(collapsed, everything[[2, 5]])
    # a window too short to hold the earlier row keeps both rows
    assert len(training_rows(dataset, max_len=2, collapse_prefixes=True)) > 2


def test_cli_trains_and_evaluates(tmp_path):
    from tests.conftest import write_csv_source

    from recalign.data.formats import PrepareOptions, prepare
    from recalign.data.sequences import SplitProtocol

    items = [(c, f"Item {c}", "B") for c in "abcdefgh"]
    log = [(f"u{u}", "abcdefgh"[(u + t) % 8], t) for u in range(16) for t in range(7)]
    dataset, _ = prepare("csv", write_csv_source(tmp_path / "src", items, log),
                         PrepareOptions(protocol=SplitProtocol(min_item_interactions=1)))
    dataset.save(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(app, ["cf", "train", "--data", str(tmp_path / "data"), "--model", "sasrec", "--out",
                                 str(tmp_path / "m"), "--epochs", "3", "--hidden", "16", "--max-len", "5",
                                 "--lr", "0.01", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / "test_metrics.json").exists() and "NDCG@10" in result.output
    result = runner.invoke(app, ["cf", "eval", "--data", str(tmp_path / "data"), "--model-dir", str(tmp_path / "m"),
                                 "--ranks", str(tmp_path / "ranks.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert {"HR@1", "HR@5", "HR@10", "HR@20", "NDCG@10"} <= set(report) and 0 <= report["NDCG@10"] <= 1
    ranks = read_ranks(tmp_path / "ranks.parquet")  # the rows the metrics were computed from
    assert len(ranks) == report["n_examples"] and ranking_metrics(ranks, (10,))["NDCG@10"] == report["NDCG@10"]
    bad = runner.invoke(app, ["cf", "eval", "--data", str(tmp_path / "data"), "--model-dir", str(tmp_path)])
    assert bad.exit_code == 1 and "no CF model" in bad.output


def test_a_non_finite_loss_stops_training_and_keeps_the_best_finite_epoch(tmp_path):
    dataset = rule_dataset(with_valid=True)
    model = small_sasrec()
    real_loss, calls = model.loss, []

    def loss_turning_nan(rows, generator):
        calls.append(1)
        loss = real_loss(rows, generator)
        return loss * float("nan") if len(calls) > 1 else loss  # the second batch (epoch 2) diverges

    model.loss = loss_turning_nan
    with pytest.raises(TrainingDiverged, match=r"epoch 2, batch 1: the loss is nan; the best finite epoch \(1\)"):
        train(model, dataset, TrainConfig(epochs=5, batch_size=1000, patience=5), tmp_path, progress=False)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert torch.load(tmp_path / "checkpoint" / "state.pt", weights_only=False)["state"]["epoch"] == 1


def test_nan_validation_scores_stop_training_instead_of_being_selected(tmp_path):
    dataset = rule_dataset(with_valid=True)
    model = small_sasrec()
    real_score, calls = model.score, []

    def score_turning_nan(histories):
        calls.append(1)
        scores = real_score(histories)
        return scores * np.nan if len(calls) > 1 else scores  # epoch 2's validation is NaN

    model.score = score_turning_nan
    with pytest.raises(TrainingDiverged, match=r"epoch 2: validation failed: .*NaN.*best finite epoch \(1\)"):
        train(model, dataset, TrainConfig(epochs=5, batch_size=1000, patience=5), tmp_path, progress=False)


def test_the_reference_presets_negatives_avoid_the_whole_row(monkeypatch):
    import recalign.cf.base as base

    drawn = []

    def recording(*args):
        drawn.append(sample_negatives(*args))
        return drawn[-1]

    sample_negatives = base.sample_negatives
    monkeypatch.setattr(base, "sample_negatives", recording)
    # shifted ids: history 1, 2, 3 and target 4 of a 5-item catalogue: item 5 is the only negative outside the row
    rows = torch.tensor([[0, 1, 2, 3, 4]] * 50)
    for preset, expected in (("tca4rec", {5}), ("allmrec", {5})):
        model = build_model("sasrec", 5, preset=preset, max_len=4)
        assert model.config.negatives_exclude_history
        model.loss(rows, torch.Generator().manual_seed(0))
        assert set(drawn[-1].tolist()) == expected
    plain = build_model("sasrec", 5, loss="bce", positions="last", max_len=4)
    plain.loss(rows, torch.Generator().manual_seed(0))
    assert set(drawn[-1].tolist()) == {1, 2, 3, 5}  # only the target is avoided
    with pytest.raises(ValueError, match="every catalogue item"):
        build_model("sasrec", 4, preset="tca4rec", max_len=4).loss(torch.tensor([[0, 1, 2, 3, 4]]),
                                                                      torch.Generator())
