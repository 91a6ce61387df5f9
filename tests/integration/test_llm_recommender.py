"""The LLM recommender end to end on the tiny random backbone: examples, training, saving, loading, decoding and
item-level ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import N_ITEMS, rule_dataset
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data import CatalogueMismatch
from recalign.data.dataset import item_table
from recalign.decode import BeamConfig, Ranked
from recalign.decode.recommend import diversity, evaluate_llm, recommend, target_ranks
from recalign.eval.metrics import ranking_metrics
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
    holder.raw_ids = ["a", "b", "c", "d", "e"]  # item 4 never ranked
    # top 2 per row: [1, 0], [1, 0], [1, 0], [1, 0] and one row ranking leaf(3) then leaf(1): [3, 1]
    spread = diversity([*results, Ranked([leaves[2], leaves[0]], [-1.0, -2.0])], holder, ks=(1, 2))
    assert spread == {"coverage@1": 2 / 5, "coverage@2": 3 / 5, "distinct_top1": 2}


def test_cli_train_eval_and_recommend(tmp_path, trained):
    dataset, _, out = trained
    data = tmp_path / "data"
    dataset.save(data)
    result = runner.invoke(app, ["llm", "eval", "--data", str(data), "--model", str(out), "--k", "1,5", "--beams", "5",
                                 "--ranks", str(tmp_path / "ranks.parquet"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["HR@1"] >= 0.9 and record["n_examples"] == 30 and "NDCG@5" in record["identifier_metrics"]
    assert record["diversity"]["distinct_top1"] > 1 and 0 < record["diversity"]["coverage@5"] <= 1
    ranks = pd.read_parquet(tmp_path / "ranks.parquet")
    assert list(ranks["target"]) == dataset.table("test").column("target").to_pylist()
    assert ranking_metrics(ranks["rank"].to_numpy(), (5,))["NDCG@5"] == record["NDCG@5"]
    shown = runner.invoke(app, ["recommend", "--model", str(out), "--history", "1,2,3", "-k", "3"])
    assert shown.exit_code == 0 and "t" in shown.output and "score" in shown.output
    raw = runner.invoke(app, ["recommend", "--model", str(out), "--history", "i1,i2", "--raw", "-k", "2", "--json"])
    assert raw.exit_code == 0 and len(json.loads(raw.stdout)) == 2
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
    assert json.loads((tmp_path / "cli" / "training.json").read_text())["rows"] == 16  # written last: finished
    metrics = json.loads((tmp_path / "cli" / "test_metrics.json").read_text())
    assert metrics["n_examples"] == 4 and set(metrics["metrics"]) >= {"HR@1", "NDCG@5"}


def selection_command(tmp_path, *settings: str) -> tuple[Path, list[str]]:
    """The rule dataset saved, and an `llm train` of the tiny model selecting on test HR@1 into tmp_path/sel."""
    data = rule_dataset().save(tmp_path / "data")
    return data, ["llm", "train", "--data", str(data), "--out", str(tmp_path / "sel"), "--backbone", "tiny",
                  "--precision", "fp32", "--finetune", "full", "--select-metric", "HR@1", "--select-split", "test",
                  "--batch-size", "16", "--micro-batch-size", "16", "--eval-split", "", *settings]


def test_model_selection_keeps_the_best_round_and_resume_does_not_rejudge(tmp_path):
    data, command = selection_command(tmp_path, "--epochs", "4", "--select-every", "2", "--lr", "0.003",
                                      "--warmup-steps", "2")
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert [row["epoch"] for row in history] == [2, 4]
    best = max(row["HR@1"] for row in history)
    saved = runner.invoke(app, ["llm", "eval", "--data", str(data), "--model", str(tmp_path / "sel"), "--k", "1",
                                "--beams", "1", "--json"])
    assert json.loads(saved.stdout)["HR@1"] == pytest.approx(best)  # the saved model is the best round's
    again = runner.invoke(app, [*command, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "sel" / "selection.json").read_text()) == history and "epoch 2:" not in again.output


def test_selection_patience_counts_rounds_without_a_gain_above_min_delta():
    from recalign.decode.selection import Selection

    selection = Selection(every=1, metric="HR@3", patience=3)
    rounds = [{"HR@3": v} for v in (0.10, 0.1005, 0.12, 0.1209, 0.05, 0.121)]
    # 0.1005 and 0.1209 gain less than 0.001 over the best (0.10, then 0.12): no gain, as Lightning counts
    assert [selection.stale_rounds(rounds[:n]) for n in range(1, 7)] == [0, 1, 0, 1, 2, 3]
    assert selection.stops(rounds) and not selection.stops(rounds[:5])
    assert not Selection(every=1, metric="HR@3").stops(rounds)  # patience 0: never


def test_lenient_selection_with_patience_stops_early_and_resumes_stopped(tmp_path):
    data, command = selection_command(tmp_path, "--epochs", "5", "--select-every", "1", "--select-rows", "4",
                                      "--max-train-rows", "16", "--lr", "0", "--select-lenient",
                                      "--select-patience", "1")
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2] and history[0]["HR@1"] == history[1]["HR@1"]  # lr 0
    assert "stopped after epoch 2" in result.output
    again = runner.invoke(app, [*command, "--resume"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "sel" / "selection.json").read_text()) == history
    state = json.loads((tmp_path / "sel" / "train" / "checkpoint" / "progress.json").read_text())["state"]
    assert state["global_step"] == 2  # one step per epoch, two epochs: the resumed run trained no further


# --- CF features as soft tokens (--use-feature) ---------------------------------------------------------------------

def features(cf_model):
    from functools import partial

    from recalign.align.features import CFFeatureInjector

    return partial(CFFeatureInjector.for_recommender, cf_model)


def untrained_cf(dataset, folder=None):
    from recalign.cf import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cf = build_model("sasrec", dataset.n_items, hidden=16, max_len=8).attach_catalogue(dataset)
    if folder is not None:
        cf.save_pretrained(folder)
    return cf


def test_feature_prompts_follow_the_reference_layout():
    from recalign.llm.prompts import render_prompt

    dataset = rule_dataset()
    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="tca4rec-feature",
                               max_history=3, use_feature=True)
    recommender = LLMRecommender.create(dataset, config, features(untrained_cf(dataset)))
    tokenizer = recommender.tokenizer
    user_id, item_id = (tokenizer.convert_tokens_to_ids(t) for t in ("[UserEmb]", "[ItemEmb]"))
    assert recommender.model.get_input_embeddings().num_embeddings == len(tokenizer) > max(user_id, item_id)
    assert recommender.model.get_output_embeddings().weight is recommender.model.get_input_embeddings().weight
    text = render_prompt(tokenizer, recommender.template, ["t1", "t2", "t3", "t4"], max_history=3)
    assert text.startswith("[UserEmb]###Instruction:\n")
    assert 'Histories: "t2"[ItemEmb], "t3"[ItemEmb], "t4"[ItemEmb].\n' in text
    ids = recommender.prompt([1, 2, 3, 4])
    # SmolLM2's tokenizer adds no BOS: [UserEmb] comes first; each placeholder is one id
    assert ids[0] == user_id and ids.count(user_id) == 1 and ids.count(item_id) == 3
    assert tokenizer.decode(ids[ids.index(item_id) - 3:ids.index(item_id) + 1]).endswith('t2"[ItemEmb]')
    with pytest.raises(ValueError, match="use_feature needs a feature hook"):
        LLMRecommender.create(dataset, config)
    with pytest.raises(ValueError, match="item_format holds \\[ItemEmb\\]"):
        LLMRecommender.create(dataset, RecommenderConfig(backbone="tiny", use_feature=True),
                              features(untrained_cf(dataset)))


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_a_feature_recommender_reloads_to_identical_recommendations(tmp_path, finetune):
    """full: the tiny backbone saved whole; lora: a local backbone folder, so the adapter path (added rows
    saved beside the adapter) is exercised."""
    from recalign.llm.backbones import load_backbone

    dataset = rule_dataset()
    backbone = "tiny"
    if finetune == "lora":
        model, tokenizer = load_backbone("tiny", "fp32")
        model.save_pretrained(tmp_path / "backbone")
        tokenizer.save_pretrained(tmp_path / "backbone")
        backbone = str(tmp_path / "backbone")
    config = RecommenderConfig(backbone=backbone, precision="fp32", finetune=finetune, prompt="tca4rec-feature",
                               max_history=4, use_feature=True)
    recommender = LLMRecommender.create(dataset, config, features(untrained_cf(dataset)))
    sft = SFTConfig(epochs=2, batch_size=16, micro_batch_size=16, lr=3e-3, warmup_steps=0, precision="fp32")
    initial = {n: p.detach().clone() for n, p in recommender.feature_injector.named_parameters()}
    sft_train(recommender.model, recommender.examples(dataset, "train", 32), sft, tmp_path / "train", progress=False,
              pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
    assert not torch.equal(recommender.feature_injector.item_mlp[0].weight, initial["item_mlp.0.weight"])
    out = recommender.save_pretrained(tmp_path / "saved")
    assert (out / "feature_injector.safetensors").exists() and (out / "cf" / "config.json").exists()
    assert (out / "adapter").exists() == (out / "added_token_embeddings.safetensors").exists() == (finetune == "lora")
    if finetune == "lora":  # the adapter holds LoRA weights only, not the resized embedding matrices
        from safetensors import safe_open

        with safe_open(out / "adapter" / "adapter_model.safetensors", "pt") as handle:
            assert handle.keys() and all("lora_" in key for key in handle.keys())
    loaded = LLMRecommender.from_pretrained(out, dataset)
    assert loaded.config.use_feature and loaded.feature_injector is not None
    assert torch.equal(loaded.model.get_input_embeddings().weight, recommender.model.get_input_embeddings().weight)
    for name, value in recommender.feature_injector.state_dict().items():
        assert torch.equal(loaded.feature_injector.state_dict()[name], value)
    histories = [[1, 2, 3], [4, 5, 6, 7, 8], [0]]
    before = recommend(recommender, histories, k=5)
    after = recommend(loaded, histories, k=5)
    for old, new in zip(before, after):
        assert [r.item for r in new] == [r.item for r in old]
        assert [r.score for r in new] == pytest.approx([r.score for r in old], abs=1e-5)
    # the features matter: the same model without the hook ranks otherwise
    hookless = beam_search_scores(loaded, histories)
    assert any(plain != pytest.approx([r.score for r in rows], abs=1e-4) for plain, rows in zip(hookless, after))


def beam_search_scores(recommender, histories):
    from recalign.decode import beam_search

    ranked = beam_search(recommender.model, [recommender.prompt(h) for h in histories], recommender.index,
                         BeamConfig(num_beams=5), recommender.pad_id)
    return [result.scores[:5] for result in ranked]


def test_recommend_excludes_the_history_and_checks_it_before_loading(trained, monkeypatch):
    _, _, out = trained
    plain = runner.invoke(app, ["recommend", "--model", str(out), "--history", "1,2,3,1", "-k", "8", "--json"])
    excluded = runner.invoke(app, ["recommend", "--model", str(out), "--history", "1,2,3,1", "-k", "5", "--json",
                                   "--exclude-history"])
    assert plain.exit_code == 0 and excluded.exit_code == 0, excluded.output
    rows = json.loads(excluded.stdout)
    # the oracle: the unexcluded ranking with the history's items struck out (k + 3 distinct history items beams)
    assert rows == [row for row in json.loads(plain.stdout) if row["item"] not in (1, 2, 3)][:5]
    assert len(rows) == 5 and all(row["score"] <= 0 for row in rows)
    help_text = " ".join(runner.invoke(app, ["recommend", "--help"]).output.split())
    assert "mean log-probability per token" in help_text and "metric names" not in help_text

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the history was checked")

    monkeypatch.setattr(LLMRecommender, "from_pretrained", no_load)
    bad = runner.invoke(app, ["recommend", "--model", str(out), "--history", "1,99"])
    assert bad.exit_code == 1 and "unknown item in --history: 99" in bad.output, bad.output


def test_cli_use_feature_trains_saves_and_answers_on_its_own(tmp_path):
    from safetensors.torch import load_file

    from recalign.align.features import CFFeatureInjector

    dataset = rule_dataset()
    data = tmp_path / "data"
    dataset.save(data)
    untrained_cf(dataset, tmp_path / "cf")
    common = ["llm", "train", "--data", str(data), "--backbone", "tiny", "--precision", "fp32", "--max-train-rows",
              "16", "--batch-size", "8", "--micro-batch-size", "8", "--lr", "0.01", "--warmup-steps", "0",
              "--max-history", "3"]
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "tca"), "--use-feature", "--cf", str(tmp_path / "cf"),
                                 "--align", "tca", "--alpha", "0.5", "--eval-rows", "4", "--beams", "5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "tca" / "config.json").read_text())
    assert saved["recommender"]["use_feature"] and saved["recommender"]["prompt"] == "tca4rec-feature"
    assert json.loads((tmp_path / "tca" / "test_metrics.json").read_text())["n_examples"] == 4
    shown = runner.invoke(app, ["recommend", "--model", str(tmp_path / "tca"), "--history", "1,2,3", "-k", "3",
                                "--json"])
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)) == 3, shown.output

    frozen = runner.invoke(app, [*common, "--out", str(tmp_path / "frozen"), "--use-feature", "--feature-frozen",
                                 "--cf", str(tmp_path / "cf"), "--eval-split", ""])
    assert frozen.exit_code == 0, frozen.output
    fresh = CFFeatureInjector.from_pretrained(tmp_path / "tca")  # same layout and seed, before training
    init = CFFeatureInjector(fresh.cf_model, **{**vars(fresh.config), "trainable": True})
    init_state = {k: v for k, v in init.state_dict().items() if not k.startswith("cf_model.")}
    frozen_state = load_file(tmp_path / "frozen" / "feature_injector.safetensors")
    trained_state = load_file(tmp_path / "tca" / "feature_injector.safetensors")
    assert frozen_state.keys() == init_state.keys() == trained_state.keys()
    assert all(torch.equal(frozen_state[k], v) for k, v in init_state.items())  # never trained: the reference's bug
    assert all(not torch.equal(trained_state[k], v) for k, v in init_state.items())

    for extra, message in ((["--use-feature"], "needs --cf"), (["--feature-frozen"], "applies to --use-feature"),
                           (["--use-feature", "--cf", str(tmp_path / "cf"), "--prompt", "chat"], "item_format")):
        bad = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), *extra])
        assert bad.exit_code == 1 and message in bad.output, bad.output


def test_lora_selection_rounds_keep_training_after_a_save_and_bad_settings_fail_early(tmp_path):
    dataset = rule_dataset()
    data = tmp_path / "data"
    dataset.save(data)
    base = ["llm", "train", "--data", str(data), "--backbone", "tiny", "--precision", "fp32", "--batch-size", "16",
            "--micro-batch-size", "16", "--max-train-rows", "32", "--eval-split", ""]
    lora = runner.invoke(app, [*base, "--out", str(tmp_path / "lora"), "--epochs", "2", "--select-every", "1",
                               "--select-metric", "HR@1", "--select-split", "test"])
    assert lora.exit_code == 0, lora.output  # saving round 1 (a merged copy) left the adapters in training
    assert [row["epoch"] for row in json.loads((tmp_path / "lora" / "selection.json").read_text())] == [1, 2]
    for extra, message in ((["--select-every", "1", "--select-split", "nope"], "is not a split with rows"),
                           (["--select-every", "1", "--select-metric", "HR@0"], "K >= 1"),
                           (["--batch-size", "10", "--micro-batch-size", "4"], "not a multiple"),
                           (["--max-train-rows", "0"], "at least 1")):
        result = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), *extra])
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "bad" / "train").exists()  # refused before any training
    cf_folder = tmp_path / "cf"
    untrained_cf(dataset, cf_folder)
    wrong = runner.invoke(app, ["recommend", "--model", str(cf_folder), "--history", "1,2"])
    assert wrong.exit_code == 1 and "not a saved LLM recommender" in wrong.output
