"""Semantic-ID recommenders end to end on the tiny backbone: learning, decoding only real items, saving and
loading a LoRA SID recommender, and the `index` / `llm train --sids` commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import FSDP_ON_CPU, N_ITEMS, launch_fsdp, rule_dataset
from tests.unit.test_tsrec import rule_sids
from typer.testing import CliRunner

from recalign.cli import app
from recalign.data.dataset import item_table
from recalign.decode import BeamConfig
from recalign.decode.recommend import evaluate_llm, identifier_log_likelihood, recommend
from recalign.index.sid import SemanticIDs
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.llm.tasks import mix_tasks, task_examples
from recalign.llm.train import SFTConfig, sft_train

runner = CliRunner()
SID = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="minionerec", identifier="sid",
                        max_history=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    dataset = rule_dataset()
    recommender = LLMRecommender.create(dataset, SID, sids=rule_sids(dataset))
    examples, _ = mix_tasks(task_examples(recommender, dataset, "train"))
    config = SFTConfig(epochs=12, batch_size=16, micro_batch_size=16, lr=3e-3, warmup_steps=5, precision="fp32")
    out = tmp_path_factory.mktemp("tiny_sid")
    sft_train(recommender.model, examples, config, out / "train", progress=False, pad_id=recommender.pad_id)
    recommender.save_pretrained(out)
    return dataset, recommender, out


def sid_log_likelihood(recommender, history, item) -> float:
    prompt = recommender.prompt(history)
    target = recommender.index.tokens(item)
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logp = torch.log_softmax(recommender.model(ids).logits[0].float(), -1)
    return float(sum(logp[len(prompt) - 1 + d, t] for d, t in enumerate(target)))


def test_a_sid_recommender_learns_and_decodes_only_real_items(trained):
    dataset, recommender, out = trained
    loaded = LLMRecommender.from_pretrained(out, dataset)
    assert loaded.index.kind == "sid" and loaded.sids == rule_sids(dataset).sids
    evaluation = evaluate_llm(loaded, dataset, "test", ks=(1, 5), config=BeamConfig(num_beams=11), progress=False)
    assert evaluation.metrics["HR@5"] >= 0.8
    for result in evaluation.results:
        items = result.items(loaded.index)
        assert len(items) == len(set(items)) == N_ITEMS and all(0 <= i < N_ITEMS for i in items)
    # a beam as wide as the catalogue is exhaustive scoring over the SIDs (summed log-probabilities, as MiniOneRec)
    for history in ([1, 2, 3], [5, 0]):
        (rows,) = recommend(loaded, [history], k=N_ITEMS, config=BeamConfig(num_beams=N_ITEMS, length_penalty=0.0))
        by_item = {r.item: r.score for r in rows}
        for item in range(N_ITEMS):
            assert by_item[item] == pytest.approx(sid_log_likelihood(loaded, history, item), abs=1e-3)
        assert by_item[10] == by_item[11]  # a shared SID is one leaf: one score
        scored = identifier_log_likelihood(loaded, [history] * N_ITEMS, list(range(N_ITEMS)), batch_size=5)
        assert scored == pytest.approx([sid_log_likelihood(loaded, history, i) for i in range(N_ITEMS)], abs=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_a_lora_sid_recommender_reloads_with_its_trained_token_rows(tmp_path, tied):
    """tied: the head follows the input rows; untied: the head's SID rows must train too, or every SID token would
    keep the same mean-resized output row and the same logit."""
    from transformers import LlamaForCausalLM

    from recalign.llm.backbones import load_backbone

    dataset = rule_dataset()
    model, tokenizer = load_backbone("tiny", "fp32")
    if not tied:
        model.config.tie_word_embeddings = False
        torch.manual_seed(0)
        model = LlamaForCausalLM(model.config)
        assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    model.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    config = RecommenderConfig(backbone=str(tmp_path / "backbone"), precision="fp32", finetune="lora",
                               prompt="minionerec", identifier="sid")
    recommender = LLMRecommender.create(dataset, config, sids=rule_sids(dataset))
    sid_row = recommender.tokenizer.convert_tokens_to_ids("<a_1>")
    before = recommender.added_rows["<a_1>"]["input"].clone()
    examples = task_examples(recommender, dataset, "train", ("next_item",))["next_item"]
    sft = SFTConfig(epochs=2, batch_size=16, micro_batch_size=16, lr=1e-2, warmup_steps=0, precision="fp32")
    sft_train(recommender.model, examples, sft, tmp_path / "train", progress=False, pad_id=recommender.pad_id)
    live = recommender.model.get_input_embeddings()(torch.tensor([sid_row]))[0]
    assert not torch.allclose(live, before)  # the SID rows trained under LoRA
    sid_ids = sorted(set(recommender.index.item_tokens[:, :2].flatten().tolist()))
    with torch.no_grad():
        logits = recommender.model(torch.tensor([recommender.prompt([1, 2])])).logits[0, -1, sid_ids]
    assert logits.std() > 0.05  # the head tells the SID tokens apart
    out = recommender.save_pretrained(tmp_path / "saved")
    assert (out / "added_token_embeddings.safetensors").exists()
    loaded = LLMRecommender.from_pretrained(out, dataset)
    torch.testing.assert_close(loaded.model.get_input_embeddings().weight[sid_row], live.detach())
    histories = [[1, 2, 3], [4, 5]]
    for old, new in zip(recommend(recommender, histories, k=5), recommend(loaded, histories, k=5)):
        assert [r.item for r in new] == [r.item for r in old]
        assert [r.score for r in new] == pytest.approx([r.score for r in old], abs=1e-4)


def test_index_and_train_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "cache"))
    dataset = rule_dataset()
    frame = dataset.items.to_pandas().drop(columns="item_id")
    frame["sid"] = rule_sids(dataset).sids
    dataset.items = item_table(pd.DataFrame(frame))
    data = tmp_path / "data"
    dataset.save(data)
    imported = runner.invoke(app, ["index", "import", "--data", str(data), "--out", str(tmp_path / "sids")])
    assert imported.exit_code == 0, imported.output
    assert "collision rate 8.33%" in imported.output  # 1 of 12 items shares another's SID
    assert SemanticIDs.from_pretrained(tmp_path / "sids").sids == rule_sids(dataset).sids
    stats = runner.invoke(app, ["index", "stats", str(tmp_path / "sids")])
    assert stats.exit_code == 0 and "level a: 3 codes used" in stats.output
    built = runner.invoke(app, ["index", "build", "--kind", "sid", "--method", "rqkmeans", "--data", str(data),
                                "--out", str(tmp_path / "built"), "--levels", "2", "--codebook-size", "3",
                                "--collisions", "extra_level"])
    assert built.exit_code == 0, built.output
    assert "collision rate 0.00%" in built.output
    cached = list((tmp_path / "cache" / "embeddings").glob("*.npy"))  # the item texts' embeddings, computed once
    assert len(cached) == 1 and np.load(cached[0]).shape == (12, 384)
    too_big = runner.invoke(app, ["index", "build", "--data", str(data), "--out", str(tmp_path / "x"),
                                  "--codebook-size", "64"])
    assert too_big.exit_code == 1 and "exceeds the 12 items" in too_big.output
    no_sids = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(tmp_path / "y"), "--backbone",
                                  "tiny", "--sa-init"])
    assert no_sids.exit_code == 1 and "need --sids" in no_sids.output
    out = tmp_path / "model"
    trained = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(out), "--backbone", "tiny",
                                  "--precision", "fp32", "--sids", str(tmp_path / "built"), "--sa-init", "--ts-align",
                                  "--max-examples", "40", "--batch-size", "8", "--micro-batch-size", "4",
                                  "--eval-rows", "4", "--beams", "5"])
    assert trained.exit_code == 0, trained.output
    assert "SA-Init:" in trained.output and "ts_align" in trained.output
    semantics = json.loads((out / "token_semantics.json").read_text())
    assert {entry["token"] for entry in semantics} >= {"<a_0>", "<b_0>"}
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert metrics["n_examples"] == 4
    scored = runner.invoke(app, ["llm", "likelihood", "--data", str(data), "--model", str(out), "--max-rows", "5",
                                 "--json"])
    assert scored.exit_code == 0, scored.output
    record = json.loads(scored.stdout)
    loaded = LLMRecommender.from_pretrained(out, dataset)
    test = dataset.split("test").iloc[:5]
    expected = identifier_log_likelihood(loaded, [list(h) for h in test["history"]], list(test["target"]))
    assert record["n_examples"] == 5 and record["log_likelihood"] == pytest.approx(expected.mean(), abs=1e-4)
    saved = json.loads((out / "items.json").read_text())
    assert saved[0]["sid"] == SemanticIDs.from_pretrained(tmp_path / "built").sids[0]


@pytest.mark.slow
def test_fsdp_training_command_saves_what_one_process_saves(tmp_path):
    """`llm train --sids` with LoRA (the SID rows train as peft trainable tokens, tied head included) under FSDP
    over two processes, then its sharded test run: the same losses, saved weights and metrics as one process."""
    dataset = rule_dataset()
    frame = dataset.items.to_pandas().drop(columns="item_id")
    frame["sid"] = rule_sids(dataset).sids
    dataset.items = item_table(pd.DataFrame(frame))
    data, sids = tmp_path / "data", tmp_path / "sids"
    dataset.save(data)
    assert runner.invoke(app, ["index", "import", "--data", str(data), "--out", str(sids)]).exit_code == 0
    common = ["llm", "train", "--data", str(data), "--backbone", "tiny", "--precision", "fp32", "--sids", str(sids),
              "--max-examples", "40", "--epochs", "2", "--batch-size", "8", "--micro-batch-size", "4", "--lr", "1e-2",
              "--lora-dropout", "0", "--eval-rows", "12", "--beams", "5"]  # dropout masks depend on the split
    one = runner.invoke(app, [*common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    launch_fsdp(FSDP_ON_CPU, *common, "--out", tmp_path / "fsdp", tmp_path=tmp_path)
    assert (tmp_path / "fsdp" / "train" / "checkpoint" / "pytorch_model_fsdp_0").is_dir()  # it did run under FSDP

    # the random "tiny" backbone cannot be reloaded by name, so its recommender is saved merged
    weights = [load_file(tmp_path / run / "model" / "model.safetensors") for run in ("one", "fsdp")]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, atol=1e-5, rtol=1e-5)
    logs = [pd.read_csv(tmp_path / run / "train" / "train_log.csv") for run in ("one", "fsdp")]
    assert logs[1]["loss"].tolist() == pytest.approx(logs[0]["loss"].tolist(), abs=1e-5)
    assert logs[0]["loss"].iloc[-1] < logs[0]["loss"].iloc[0]  # it trained
    metrics = [json.loads((tmp_path / run / "test_metrics.json").read_text()) for run in ("one", "fsdp")]
    assert metrics[1]["n_examples"] == 12
    assert metrics[1]["metrics"] == pytest.approx(metrics[0]["metrics"], abs=1e-6)
