"""The sequence objective: one row per window of a user's items trains every next item, exactly as the row-per-target
objective would train each of them on its own prompt (the oracle), packed or not, with TCA's soft labels too."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tests.conftest import rule_dataset
from typer.testing import CliRunner

from recalign.align.tca import TCAConfig, TCALoss
from recalign.cf import build_model
from recalign.cli import app
from recalign.llm.backbones import scratch_config
from recalign.llm.recommender import LLMRecommender, RecommenderConfig
from recalign.llm.train import (
    LabelPositionLM,
    SFTConfig,
    SFTExample,
    collate,
    cross_entropy_loss,
    sft_train,
)

runner = CliRunner()
SEQUENCE = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="sequence", domain="things",
                             max_history=4)


@pytest.fixture(scope="module")
def setup():
    dataset = rule_dataset(n_users=6)
    return dataset, LLMRecommender.create(dataset, SEQUENCE)


def label_losses(recommender, examples, hook=None, pack_length=0):
    batch = collate(examples, recommender.pad_id, pack_length)
    logits = LabelPositionLM(recommender.model).eval()(batch.input_ids, batch.attention_mask, batch.position_ids,
                                                        batch.label_rows, batch.label_cols)
    return (hook or cross_entropy_loss)(logits, batch), batch


def row_examples_of(recommender, sequence_rows: list[SFTExample]) -> list[SFTExample]:
    """Each target of the sequence rows as its own row: the prompt of the items before it, then its identifier."""
    return [SFTExample(recommender.prompt(span.history), recommender.index.tokens(span.item), item=span.item,
                       history=span.history)
            for row in sequence_rows for span in row.target_spans()]


def test_windows_train_every_item_after_the_first_once(setup):
    dataset, recommender = setup
    rows, chained = recommender.sequence_examples(dataset, "train")
    frame = dataset.split("train")
    assert chained.rows == len(frame) and len(chained.sequences) == 6 and chained.covered == 0
    for row in rows:
        assert row.prompt_ids == recommender.prompt(row.history) and len(row.history) == 1
        window = list(row.history)
        for span in row.target_spans():
            assert span.history == tuple(window) and len(span.history) <= SEQUENCE.max_history
            assert row.target_ids[span.start:span.start + span.length] == recommender.index.tokens(span.item)
            window.append(span.item)
    # every train row's target is trained once, plus each sequence's second item (the first row's history tail)
    trained = sorted(span.item for row in rows for span in row.target_spans())
    expected = sorted(item for sequence in chained.sequences for item in sequence[1:])
    assert trained == expected and len(trained) == chained.targets


def test_sequence_losses_and_gradients_equal_the_row_objectives_on_the_same_prefixes(setup):
    dataset, recommender = setup
    rows, _ = recommender.sequence_examples(dataset, "train")
    rows = rows[:4]
    singles = row_examples_of(recommender, rows)
    model = recommender.model
    sequence_loss, sequence_batch = label_losses(recommender, rows)
    row_loss, row_batch = label_losses(recommender, singles)
    assert torch.equal(sequence_batch.label_tokens, row_batch.label_tokens)
    assert torch.equal(sequence_batch.items, row_batch.items) and sequence_batch.histories == row_batch.histories
    torch.testing.assert_close(sequence_loss, row_loss, atol=1e-5, rtol=1e-5)

    grads = []
    for loss in (sequence_loss, row_loss):
        model.zero_grad()
        loss.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)
    model.zero_grad()


def test_tca_soft_labels_at_every_position_equal_those_of_each_prefix(setup):
    dataset, recommender = setup
    rows, _ = recommender.sequence_examples(dataset, "train")
    torch.manual_seed(0)
    cf = build_model("sasrec", dataset.n_items, hidden=16, max_len=4)
    hook = TCALoss(cf, recommender.index, TCAConfig(alpha=0.5, msl=True, tau=2.0))
    sequence_loss, sequence_batch = label_losses(recommender, rows[:3], hook)
    row_loss, row_batch = label_losses(recommender, row_examples_of(recommender, rows[:3]), hook)
    assert len(sequence_batch.items) > len(sequence_batch.row_histories)  # several targets per row
    torch.testing.assert_close(sequence_loss, row_loss, atol=1e-5, rtol=1e-5)
    q_sequence, q_rows = hook.soft_labels(sequence_batch), hook.soft_labels(row_batch)
    torch.testing.assert_close(q_sequence.log_q, q_rows.log_q)


@pytest.mark.parametrize("pack_length", [1, 40, 128])
def test_packed_batches_give_the_same_label_losses(setup, pack_length):
    dataset, recommender = setup
    rows, _ = recommender.sequence_examples(dataset, "train")
    rng = random.Random(pack_length)
    examples = rng.sample(rows, 8) + row_examples_of(recommender, rows[:2])  # long and short rows mixed
    plain, plain_batch = label_losses(recommender, examples)
    packed, packed_batch = label_losses(recommender, examples, pack_length=pack_length)
    if pack_length == 128:
        assert packed_batch.input_ids.shape[0] < len(examples)  # packing happened
    assert packed_batch.attention_mask is None
    assert sorted(packed_batch.label_tokens.tolist()) == sorted(plain_batch.label_tokens.tolist())
    # labels come out in another order: match them by (target item, history, depth)
    def keyed(losses, batch):
        return sorted(zip([(int(batch.items[e]), batch.histories[e], int(d)) for e, d in
                           zip(batch.label_example.tolist(), batch.label_depth)], losses.tolist()))
    for (key_a, a), (key_b, b) in zip(keyed(plain, plain_batch), keyed(packed, packed_batch)):
        assert key_a == key_b and abs(a - b) < 1e-5


def test_packing_is_refused_with_an_embedding_hook(setup, tmp_path):
    _, recommender = setup
    with pytest.raises(ValueError, match="pack_length 0"):
        sft_train(recommender.model, [SFTExample([1, 2], [3, 2])], SFTConfig(pack_length=64, precision="fp32"),
                  tmp_path, progress=False, embedding_hook=torch.nn.Identity())


def test_the_sequence_objective_needs_the_sequence_layout_and_a_valid_context():
    dataset = rule_dataset(n_users=2)
    plain = LLMRecommender.create(dataset, RecommenderConfig(backbone="tiny", precision="fp32", finetune="full"))
    with pytest.raises(ValueError, match="sequence-layout"):
        plain.sequence_examples(dataset, "train")
    sequence = LLMRecommender.create(dataset, SEQUENCE)
    with pytest.raises(ValueError, match="context"):
        sequence.sequence_examples(dataset, "train", context=SEQUENCE.max_history + 1)
    two, _ = sequence.sequence_examples(dataset, "train", context=2)
    assert all(len(row.history) == 2 for row in two)


def test_scratch_backbones_are_parsed_and_trained_in_full():
    assert scratch_config("scratch:4x256").layers == 4 and scratch_config("scratch:4x256").hidden == 256
    assert scratch_config("smollm2-135m") is None
    with pytest.raises(ValueError, match="LAYERSxWIDTH"):
        scratch_config("scratch:big")
    with pytest.raises(ValueError, match="finetune 'full'"):
        RecommenderConfig(backbone="scratch:2x64", finetune="lora")
    model = LLMRecommender.create(rule_dataset(n_users=2), RecommenderConfig(
        backbone="scratch:2x32", precision="fp32", finetune="full")).model
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32


def test_llm_train_with_sequence_rows_end_to_end(tmp_path):
    data = rule_dataset(n_users=20).save(tmp_path / "data")
    out = tmp_path / "seq"
    result = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(out), "--backbone", "tiny",
                                 "--finetune", "full", "--precision", "fp32", "--rows", "sequence", "--max-history",
                                 "4", "--pack-length", "96", "--epochs", "3", "--batch-size", "8",
                                 "--micro-batch-size", "8", "--lr", "3e-3", "--warmup-steps", "2", "--eval-rows", "5",
                                 "--beams", "5"])
    assert result.exit_code == 0, result.output
    assert "item targets" in result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["template"]["layout"] == "sequence"
    loaded = LLMRecommender.from_pretrained(out)
    assert loaded.prompt([1, 2, 3])[-len(loaded.index.tokens(3)):] == loaded.index.tokens(3)
    refused = runner.invoke(app, ["llm", "train", "--data", str(data), "--out", str(tmp_path / "x"), "--backbone",
                                  "tiny", "--rows", "sequence", "--prompt", "chat"])
    assert refused.exit_code == 1 and "sequence-layout" in refused.output


def test_sequence_rows_train_the_same_steps_packed_or_not_at_any_micro_batch(setup, tmp_path):
    """The loss is the global label mean whatever the micro-batching (what DDP relies on): packed sequence rows at
    micro-batch 2 and padded ones at micro-batch 4 take the same optimiser steps."""
    dataset, _ = setup
    logs = []
    for micro, pack in ((4, 0), (2, 128), (4, 64)):
        recommender = LLMRecommender.create(dataset, SEQUENCE)
        rows, _ = recommender.sequence_examples(dataset, "train")
        config = SFTConfig(epochs=2, batch_size=4, micro_batch_size=micro, lr=1e-2, warmup_steps=1,
                           precision="fp32", pack_length=pack, weight_decay=0.0)
        result = sft_train(recommender.model, rows, config, tmp_path / f"{micro}-{pack}", progress=False,
                           pad_id=recommender.pad_id)
        logs.append([row["loss"] for row in result.log])
    assert len(logs[0]) == 6
    for other in logs[1:]:
        assert other == pytest.approx(logs[0], abs=2e-5)
