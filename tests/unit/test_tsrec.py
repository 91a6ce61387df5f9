"""TS-Rec pieces on the tiny backbone: SA-Init's rows, TS-Align's examples, the SID task mix, token semantics."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import rule_dataset
from typer.testing import CliRunner

from recalign.align.tsrec import (
    TokenSemantics,
    _parse_answer,
    read_semantics,
    sa_init,
    teacher_semantics,
    tfidf_semantics,
    token_clusters,
    ts_align_examples,
)
from recalign.cli import app
from recalign.index.sid import SemanticIDs, sid_tokens
from recalign.llm.backbones import load_backbone
from recalign.llm.recommender import LLMRecommender, RecommenderConfig, add_sid_tokens
from recalign.llm.tasks import SID_TASKS, mix_tasks, task_examples

pytest.importorskip("transformers")


def rule_sids(dataset) -> SemanticIDs:
    """Item i -> <a_{i // 4}><b_{i % 4}>, except items 10 and 11, which share one SID (a collision)."""
    sids = [[f"<a_{i // 4}>", f"<b_{i % 4}>"] for i in range(dataset.n_items)]
    sids[11] = list(sids[10])
    return SemanticIDs(sids, dataset.raw_ids, {})


def test_sa_init_writes_the_rescaled_keyword_mean_and_nothing_else():
    model, tokenizer = load_backbone("tiny", "fp32")
    sids = rule_sids(rule_dataset()).sids
    new = add_sid_tokens(model, tokenizer, sids)
    assert new == sid_tokens(sids)
    table = model.get_input_embeddings().weight.detach().clone()
    keywords = {"<a_0>": ["red apple", "blue"], "<b_2>": ["hammer", "nail set"]}
    semantics = {t: TokenSemantics(t, "", k) for t, k in keywords.items()}
    counts = sa_init(model, tokenizer, semantics, new)
    assert counts == {"initialised": 2, "left_at_default": len(new) - 2}
    after = model.get_input_embeddings().weight.detach()
    mean_norm = table.norm(dim=1).mean()
    written = []
    for token, words in keywords.items():
        ids = tokenizer(" ".join(words), add_special_tokens=False).input_ids
        mean = table[ids].mean(dim=0)
        row = tokenizer.convert_tokens_to_ids(token)
        torch.testing.assert_close(after[row], mean * mean_norm / (mean.norm() + 1e-6))
        assert after[row].norm() == pytest.approx(float(mean_norm), rel=1e-4)
        written.append(row)
    others = torch.ones(len(table), dtype=torch.bool)
    others[written] = False
    assert torch.equal(after[others], table[others])
    # tied embeddings: the head's rows are the same tensor
    assert torch.equal(model.get_output_embeddings().weight[written], after[written])


def test_the_recommender_keeps_the_initialised_rows_and_trains_them_under_lora(tmp_path):
    dataset = rule_dataset()
    model, tokenizer = load_backbone("tiny", "fp32")
    model.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    semantics = {"<a_1>": TokenSemantics("<a_1>", "", ["garden tools"])}
    config = RecommenderConfig(backbone=str(tmp_path / "backbone"), precision="fp32", finetune="lora",
                               prompt="minionerec", identifier="sid")
    recommender = LLMRecommender.create(dataset, config, sids=rule_sids(dataset),
                                        token_init=lambda m, t, new: sa_init(m, t, semantics, new))
    row = recommender.added_rows["<a_1>"]["input"]
    ids = recommender.tokenizer("garden tools", add_special_tokens=False).input_ids
    # oracle: the same backbone resized the same way, then the keyword mean rescaled to the mean row norm by hand
    fresh, fresh_tokenizer = load_backbone(str(tmp_path / "backbone"), "fp32")
    add_sid_tokens(fresh, fresh_tokenizer, rule_sids(dataset).sids, config.seed)
    table = fresh.get_input_embeddings().weight.detach()
    mean = table[ids].mean(dim=0)
    torch.testing.assert_close(row, mean * table.norm(dim=1).mean() / (mean.norm() + 1e-6))
    untouched = recommender.added_rows["<a_2>"]["input"]  # no keywords: transformers' mean resizing
    torch.testing.assert_close(untouched, table[fresh_tokenizer.convert_tokens_to_ids("<a_2>")])
    trainable = [n for n, p in recommender.model.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in n for n in trainable) and any("lora_" in n for n in trainable)
    assert ids  # the keywords are real text


def test_ts_align_examples_follow_the_reference_layout():
    _, tokenizer = load_backbone("tiny", "fp32")
    sids = rule_sids(rule_dataset()).sids
    tokenizer.add_tokens(sid_tokens(sids))
    semantics = {"<b_1>": TokenSemantics("<b_1>", "This product family comprises hats.", ["hat"]),
                 "<a_0>": TokenSemantics("<a_0>", "", ["x"])}  # no description: no TS-Align example
    examples = ts_align_examples(tokenizer, semantics, sid_tokens(sids))
    assert len(examples) == 2
    forward, backward = examples
    prompt = tokenizer.decode(forward.prompt_ids)
    assert prompt.startswith("Below is an instruction") and prompt.endswith(
        "What is the typical scope and shared features of items that contain the token: <b_1>?\n\n### Response:")
    assert "### Instruction:\nAnswer the question about item Semantic ID token identification." in prompt
    assert forward.target_ids == tokenizer("This product family comprises hats.", add_special_tokens=False).input_ids \
        + [tokenizer.eos_token_id]
    assert tokenizer.decode(backward.prompt_ids).endswith(
        'contain: "This product family comprises hats."?\n\n### Response:')
    assert backward.target_ids == [tokenizer.convert_tokens_to_ids("<b_1>"), tokenizer.eos_token_id]
    assert forward.item == backward.item == -1  # not identifiers of the index: no TCA soft labels


def test_sid_task_mix_and_its_proportional_budget():
    dataset = rule_dataset()
    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="minionerec",
                               identifier="sid", max_history=3)
    recommender = LLMRecommender.create(dataset, config, sids=rule_sids(dataset))
    tasks = task_examples(recommender, dataset, "train", SID_TASKS)
    rows = dataset.split("train")
    assert len(tasks["next_item"]) == len(tasks["next_title"]) == len(rows)
    assert len(tasks["title_to_sid"]) == 12 and len(tasks["sid_to_title"]) == 11  # items 10 and 11 share a SID
    tokenizer, eos = recommender.tokenizer, recommender.tokenizer.eos_token_id
    first = tasks["next_item"][0]
    history, target = rows["history"][0], int(rows["target"][0])
    assert first.target_ids == recommender.index.tokens(target) and first.item == target
    text = tokenizer.decode(first.prompt_ids)
    assert ", ".join(recommender.identifiers[int(i)] for i in history[-3:]) in text
    assert tasks["next_title"][0].target_ids == tokenizer(f"t{target}", add_special_tokens=False).input_ids + [eos]
    title_to_sid = tasks["title_to_sid"][5]
    assert "Which item has the title: t5?" in tokenizer.decode(title_to_sid.prompt_ids)
    assert title_to_sid.target_ids == recommender.index.tokens(5) and title_to_sid.item == -1
    sid_to_title = tasks["sid_to_title"][5]
    assert tokenizer.decode(sid_to_title.prompt_ids).endswith(
        'What is the title of item "<a_1><b_1>"?\n\n### Response:')  # the answer is not in the prompt
    total = sum(map(len, tasks.values()))
    mixed, counts = mix_tasks(tasks, budget=total // 2)
    for name, examples in tasks.items():
        assert counts[name] == round(len(examples) * (total // 2) / total)
    assert len(mixed) == sum(counts.values())
    with pytest.raises(ValueError, match="title recommender"):
        task_examples(LLMRecommender.create(dataset, RecommenderConfig(backbone="tiny", precision="fp32")),
                      dataset, "train", ("next_item", "next_title"))


def test_the_reference_layout_ends_prompts_and_targets_with_a_newline():
    dataset = rule_dataset()
    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="minionerec-reference",
                               identifier="sid", max_history=3)
    recommender = LLMRecommender.create(dataset, config, sids=rule_sids(dataset))
    tokenizer, eos = recommender.tokenizer, recommender.tokenizer.eos_token_id
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    sid = [tokenizer.convert_tokens_to_ids(t) for t in rule_sids(dataset).sids[5]]
    assert recommender.index.tokens(5) == sid + newline + [eos]  # "<a_1><b_1>\n" then EOS, as the reference's
    tasks = task_examples(recommender, dataset, "train", SID_TASKS, max_rows=2)
    for name, examples in tasks.items():
        assert tokenizer.decode(examples[0].prompt_ids).endswith("### Response:\n"), name
        assert examples[0].target_ids[-1 - len(newline):] == newline + [eos], name
    assert tasks["sid_to_title"][5].target_ids == tokenizer("t5\n", add_special_tokens=False).input_ids + [eos]
    semantics = {"<b_1>": TokenSemantics("<b_1>", "Hats.", ["hat"])}
    forward, backward = ts_align_examples(tokenizer, semantics, ["<b_1>"], reference=True)
    prompt = tokenizer.decode(forward.prompt_ids)
    # the reference's TS-Align block: one newline after the instruction, not a blank line
    assert "token identification.\n### User Input: \nWhat is the typical" in prompt
    assert prompt.endswith("<b_1>?\n\n### Response:\n")
    assert backward.target_ids == [tokenizer.convert_tokens_to_ids("<b_1>"), *newline, eos]


def test_token_semantics_sources(tmp_path):
    sids = [["<a_0>", "<b_0>"], ["<a_0>", "<b_1>"], ["<a_1>", "<b_0>"]]
    titles = ["Cordless drill driver", "Drill bit set titanium", "Garden hose nozzle"]
    assert token_clusters(sids) == {"<a_0>": [0, 1], "<b_0>": [0, 2], "<b_1>": [1], "<a_1>": [2]}
    semantics = tfidf_semantics(sids, titles, n_keywords=5)
    assert "drill" in semantics["<a_0>"].keywords and "garden" not in semantics["<a_0>"].keywords
    assert "Cordless drill driver" in semantics["<a_0>"].description
    path = tmp_path / "k.json"
    path.write_text(json.dumps([{"token": "<a_0>", "description": "Drills.", "keywords": ["drill"]}]))
    assert read_semantics(path)["<a_0>"].keywords == ["drill"]
    path.write_text(json.dumps([{"token": "<a_0>", "keywords": ["drill"]}]))
    with pytest.raises(ValueError, match="entry 0: field 'description'"):
        read_semantics(path)
    parsed, ok = _parse_answer("<a_0>", 'Sure! {"description": "Power drills.", "keywords": ["drill", "bit"]}')
    assert ok and parsed.keywords == ["drill", "bit"] and parsed.description == "Power drills."
    fallback, ok = _parse_answer("<a_0>", "Tools for drilling holes in wood and metal")
    assert not ok and fallback.keywords[:3] == ["tools", "for", "drilling"]


def test_teacher_semantics_asks_the_llm_once_per_token():
    model, tokenizer = load_backbone("tiny", "fp32")
    sids = [["<a_0>"], ["<a_1>"], ["<a_0>"]]
    semantics, repairs = teacher_semantics(sids, ["drill", "hose", "saw"], model, tokenizer, batch_size=2,
                                           max_new_tokens=4)
    assert set(semantics) == {"<a_0>", "<a_1>"} and repairs["tokens"] == 2
    assert repairs["unparsed_answers"] == 2  # a random model writes no JSON: counted, kept as text
    assert tokenizer.padding_side == "right"


def test_a_reference_checkpoint_is_evaluated_with_the_references_evaluation_prompt(tmp_path):
    dataset = rule_dataset()
    config = RecommenderConfig(backbone="tiny", precision="fp32", finetune="full", prompt="minionerec-reference",
                               identifier="sid", max_history=3)
    recommender = LLMRecommender.create(dataset, config, sids=rule_sids(dataset))
    evaluated = recommender.with_prompt("minionerec-eval-reference")
    text = recommender.tokenizer.decode(evaluated.prompt([1, 2]))
    assert "given the following chronological interaction history: <a_0><b_1>, <a_0><b_2>\n\n### Response:\n" in text
    assert "in chronological order" in recommender.tokenizer.decode(recommender.prompt([1, 2]))  # the trained one
    recommender.save_pretrained(tmp_path / "model")
    dataset.save(tmp_path / "data")
    command = ["llm", "eval", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"), "--k", "1",
               "--beams", "2", "--max-rows", "3", "--json"]
    result = CliRunner().invoke(app, [*command, "--prompt", "minionerec-eval-reference"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["protocol"]["prompt"] == "minionerec-eval-reference"
    refused = CliRunner().invoke(app, [*command, "--prompt", "minionerec"])
    assert refused.exit_code == 1 and "cannot stand in for 'minionerec-reference'" in refused.output
