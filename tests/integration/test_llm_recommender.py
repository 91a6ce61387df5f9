"""The LLM recommender end to end on the tiny random backbone: examples, training, saving, loading, decoding and
item-level ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.conftest import N_ITEMS, rule_dataset
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data import CatalogueMismatch
from recalign.data.dataset import item_table
from recalign.decode import BeamConfig, Ranked
from recalign.decode.recommend import evaluate_llm, recommend, target_ranks
from recalign.index import ItemIndex
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.llm.train import SFTConfig, sft_train

runner = CliRunner()
TINY = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", domain="things")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny recommender that has memorised the rule dataset, saved and loaded back."""
    dataset = rule_dataset()
    recommender = LLMRecommender.create(dataset, TINY)
    examples = recommender.examples(dataset, "train")
    config = SFTConfig(epochs=25, batch_size=16, micro_batch_size=16, lr=3e-3, warmup_steps=5, precision="fp32")
    out = tmp_path_factory.mktemp("tiny_rule")
    sft_train(recommender.model, examples, config, out / "train", progress=False, pad_id=recommender.pad_id)
    recommender.save_pretrained(out)
    return dataset, recommender, out


def test_examples_use_the_index_tokens_and_the_prompt_layout():
    dataset = rule_dataset()
    recommender = LLMRecommender.create(dataset, TINY)
    examples = recommender.examples(dataset, "train", max_rows=5)
    frame = dataset.split("train").iloc[:5]
    for example, history, target in zip(examples, frame["history"], frame["target"]):
        assert example.target_ids == recommender.index.tokens(int(target))
        assert example.target_ids[-1] == recommender.tokenizer.eos_token_id
        assert example.item == int(target) and example.history == tuple(int(i) for i in history)
        text = recommender.tokenizer.decode(example.prompt_ids)
        assert all(f'"{dataset.titles[int(i)]}"' in text for i in history)
        assert "things" in text


def test_training_teaches_the_rule_and_loading_reproduces_the_model(trained):
    dataset, recommender, out = trained
    loaded = LLMRecommender.from_pretrained(out, dataset)
    ids = torch.tensor([recommender.prompt([1, 2, 3])])
    with torch.no_grad():
        assert torch.allclose(recommender.model(ids).logits, loaded.model(ids).logits, atol=1e-5)
    evaluation = evaluate_llm(loaded, dataset, "test", ks=(1, 5), config=BeamConfig(num_beams=5), progress=False)
    assert evaluation.metrics["HR@1"] >= 0.9  # test rows are memorised training rows
    untrained = evaluate_llm(LLMRecommender.create(dataset, TINY), dataset, "test", ks=(1, 5),
                             config=BeamConfig(num_beams=5), progress=False)
    assert untrained.metrics["HR@1"] < 0.5
    for result in evaluation.results:  # every output is a catalogue item, each item at most once
        items = result.items(loaded.index)
        assert len(items) == len(set(items)) and all(0 <= i < N_ITEMS for i in items)


def test_a_saved_recommender_refuses_another_catalogue(trained):
    _, _, out = trained
    other = rule_dataset()
    renamed = other.items.to_pandas().drop(columns="item_id")
    renamed["raw_id"] = [f"x{i}" for i in range(len(renamed))]
    other.items = item_table(renamed)
    with pytest.raises(CatalogueMismatch, match="trained on a catalogue of 12 items"):
        LLMRecommender.from_pretrained(out, other)


def test_recommend_returns_k_distinct_titled_items(trained):
    dataset, _, out = trained
    loaded = LLMRecommender.from_pretrained(out)
    (rows,) = recommend(loaded, [[3, 4, 5]], k=4)
    assert len(rows) == 4 and len({r.item for r in rows}) == 4
    assert [r.title for r in rows] == [dataset.titles[r.item] for r in rows]
    assert [r.score for r in rows] == sorted((r.score for r in rows), reverse=True)


def test_item_ranks_are_pessimistic_within_a_shared_identifier():
    # items 0 and 2 share an identifier; the search ranked leaf(1), then leaf(0 and 2), then leaf(3)
    index = ItemIndex.from_sequences([[5, 6], [7], [5, 6], [8]], eos_id=2)

    class Holder:
        pass

    holder = Holder()
    holder.index = index
    leaves = [int(index.item_leaf[i]) for i in (1, 0, 3)]
    results = [Ranked(leaves, [-1.0, -2.0, -3.0])] * 4
    item_ranks, leaf_ranks = target_ranks(results, np.array([1, 0, 2, 3]), holder)
    assert item_ranks.tolist() == [0, 2, 2, 3]  # the target ranks last among the items sharing its title
    assert leaf_ranks.tolist() == [0, 1, 1, 2]
    missing, _ = target_ranks([Ranked(leaves[:1], [-1.0])], np.array([3]), holder)
    assert missing.tolist() == [np.inf]


def test_cli_train_eval_and_recommend(tmp_path, trained):
    dataset, _, out = trained
    data = tmp_path / "data"
    dataset.save(data)
    result = runner.invoke(app, ["llm", "eval", "--data", str(data), "--model", str(out), "--k", "1,5", "--beams", "5",
                                 "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["HR@1"] >= 0.9 and record["n_examples"] == 30 and "NDCG@5" in record["identifier_metrics"]
    shown = runner.invoke(app, ["recommend", "--model", str(out), "--history", "1,2,3", "-k", "3"])
    assert shown.exit_code == 0 and "t" in shown.output and "score" in shown.output
    raw = runner.invoke(app, ["recommend", "--model", str(out), "--history", "i1,i2", "--raw", "-k", "2", "--json"])
    assert raw.exit_code == 0 and len(json.loads(raw.output)) == 2
    for history, message in (("1,99", "unknown item"), (" , ", "empty"), ("i1,zz", "unknown item")):
        bad = runner.invoke(app, ["recommend", "--model", str(out), "--history", history,
                                  *(["--raw"] if history.startswith("i") else [])])
        assert bad.exit_code == 1 and message in bad.output, bad.output
    too_few = runner.invoke(app, ["llm", "eval", "--data", str(data), "--model", str(out), "--k", "10", "--beams", "5"])
    assert too_few.exit_code == 1 and "num_beams" in too_few.output
    bad_prompt = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(tmp_path / "x"), "--backbone",
                                     "tiny", "--prompt", "nope"])
    assert bad_prompt.exit_code == 1 and "unknown prompt template 'nope'" in bad_prompt.output
    trained_cli = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(tmp_path / "cli"),
                                      "--backbone", "tiny", "--precision", "fp32", "--max-train-rows", "16",
                                      "--batch-size", "8", "--micro-batch-size", "4", "--eval-rows", "4",
                                      "--beams", "5"])
    assert trained_cli.exit_code == 0, trained_cli.output
    metrics = json.loads((tmp_path / "cli" / "test_metrics.json").read_text())
    assert metrics["n_examples"] == 4 and set(metrics["metrics"]) >= {"HR@1", "NDCG@5"}


def test_model_selection_keeps_the_best_round_and_resume_does_not_rejudge(tmp_path):
    dataset = rule_dataset()
    data = tmp_path / "data"
    dataset.save(data)
    command = ["llm", "train", "--data", str(data), "--out", str(tmp_path / "sel"), "--backbone", "tiny",
               "--precision", "fp32", "--finetune", "full", "--epochs", "4", "--select-every", "2",
               "--select-metric", "HR@1", "--select-split", "test", "--batch-size", "16", "--micro-batch-size", "16",
               "--lr", "0.003", "--warmup-steps", "2", "--eval-split", ""]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert [row["epoch"] for row in history] == [2, 4]
    best = max(row["HR@1"] for row in history)
    saved = runner.invoke(app, ["llm", "eval", "--data", str(data), "--model", str(tmp_path / "sel"), "--k", "1",
                                "--beams", "1", "--json"])
    assert json.loads(saved.output)["HR@1"] == pytest.approx(best)  # the saved model is the best round's
    again = runner.invoke(app, [*command, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "sel" / "selection.json").read_text()) == history and "epoch 2:" not in again.output
