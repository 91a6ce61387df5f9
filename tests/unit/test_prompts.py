from __future__ import annotations

from types import SimpleNamespace

import pytest

from recalign.llm.prompts import (
    TEMPLATES,
    PromptTemplate,
    check_interchangeable,
    encode_prompt,
    get_template,
    render_prompt,
    separator_id,
)

HISTORY = ["The Matrix", "Heat"]

EXPECTED_TCA4REC = """###Instruction:
Given the user interaction history, please recommendate the games that user is most likely to view.

###Input:
User Interaction Histories: "The Matrix", "Heat".

Then the movie that user is most likely to watch is:
###Response:"""


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer from the shared cache (converted once; see test_llm_backbones)."""
    pytest.importorskip("transformers")
    from recalign.llm import backbones

    try:
        backbones.smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return backbones.load_tokenizer("tiny")


class StubTokenizer:
    """Just enough of a tokenizer to pin down the separator rule for tokenizers other than SmolLM2's."""

    def __init__(self, bos_token_id=None, vocab=None):
        self.bos_token_id = bos_token_id
        self.unk_token_id = 0
        self.vocab = vocab or {}

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=[7, 8, 9])

    def convert_tokens_to_ids(self, token):
        return self.vocab.get(token, self.unk_token_id)


def test_tca4rec_text_is_the_papers_prompt(tokenizer):
    assert render_prompt(tokenizer, TEMPLATES["tca4rec"], HISTORY, domain="games") == EXPECTED_TCA4REC


def test_tca4rec_domain_defaults_to_items():
    text = get_template("tca4rec").text(HISTORY)
    assert "please recommendate the items that user" in text


def test_tca4rec_ids_are_the_prompt_then_one_separator(tokenizer):
    ids = encode_prompt(tokenizer, TEMPLATES["tca4rec"], HISTORY, domain="games")
    # SmolLM2 adds no BOS of its own, and its BOS is "<|im_start|>" (id 1): TCA4Rec's Qwen layout
    assert tokenizer.bos_token == "<|im_start|>" and tokenizer.bos_token_id == 1
    assert ids[-1] == tokenizer.bos_token_id
    assert ids[0] != tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids[:-1] == tokenizer(EXPECTED_TCA4REC).input_ids
    assert tokenizer.decode(ids) == EXPECTED_TCA4REC + "<|im_start|>"


def test_prompt_plus_title_is_the_training_sequence(tokenizer):
    """The item index tokenizes titles without special tokens; appended to the prompt ids they decode cleanly."""
    prompt = encode_prompt(tokenizer, TEMPLATES["tca4rec"], HISTORY)
    title = tokenizer("Toy Story", add_special_tokens=False).input_ids
    sequence = prompt + title + [tokenizer.eos_token_id]
    assert tokenizer.decode(sequence).endswith("###Response:<|im_start|>Toy Story<|im_end|>")


def test_max_history_keeps_the_most_recent_titles(tokenizer):
    template = TEMPLATES["tca4rec"]
    history = ["A", "B", "C", "D"]
    assert 'Histories: "C", "D".' in render_prompt(tokenizer, template, history, max_history=2)
    assert 'Histories: "A", "B", "C", "D".' in render_prompt(tokenizer, template, history, max_history=10)
    assert 'Histories: "A", "B", "C", "D".' in render_prompt(tokenizer, template, history)
    assert "Histories: ." in render_prompt(tokenizer, template, history, max_history=0)
    assert encode_prompt(tokenizer, template, history, max_history=2) == encode_prompt(tokenizer, template, ["C", "D"])
    with pytest.raises(ValueError, match="max_history"):
        render_prompt(tokenizer, template, history, max_history=-1)


def test_titles_are_inserted_literally():
    text = get_template("tca4rec").text(["{domain} {history}", 'say "hi"'], domain="games")
    assert 'Histories: "{domain} {history}", "say "hi"".' in text


def test_chat_prompt_is_one_user_turn_ending_in_the_generation_prompt(tokenizer):
    template = get_template("chat")
    rendered = render_prompt(tokenizer, template, HISTORY, domain="games")
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert '"The Matrix", "Heat"' in rendered and "the games that" in rendered
    assert rendered.count("<|im_start|>user\n") == 1
    ids = encode_prompt(tokenizer, template, HISTORY, domain="games")
    assert ids == tokenizer(rendered, add_special_tokens=False).input_ids  # no separator, no extra specials
    assert ids[-4:] == tokenizer("<|im_start|>assistant\n", add_special_tokens=False).input_ids


def test_separator_rule_for_other_tokenizers():
    qwen_like = StubTokenizer(bos_token_id=None, vocab={"<|im_start|>": 42})
    assert separator_id(qwen_like) == 42
    assert encode_prompt(qwen_like, TEMPLATES["tca4rec"], HISTORY) == [7, 8, 9, 42]
    llama_like = StubTokenizer(bos_token_id=5, vocab={"<|im_start|>": 42})
    assert encode_prompt(llama_like, TEMPLATES["tca4rec"], HISTORY) == [7, 8, 9, 5]
    neither = StubTokenizer(bos_token_id=None)
    assert separator_id(neither) is None
    assert encode_prompt(neither, TEMPLATES["tca4rec"], HISTORY) == [7, 8, 9]


def test_unknown_template_lists_the_names():
    with pytest.raises(KeyError, match="'nope'.*chat, minionerec, minionerec-eval-reference, minionerec-reference, "
                                       "sequence, tca4rec"):
        get_template("nope")


def test_template_validation():
    with pytest.raises(ValueError, match="separator"):
        PromptTemplate("x", "i", "{history}", "r", separator="eos")
    with pytest.raises(ValueError, match="history"):
        PromptTemplate("x", "i", "no placeholder", "r")


def test_a_template_can_come_from_a_json_file(tmp_path):
    from recalign.llm.prompts import get_template

    path = tmp_path / "short.json"
    path.write_text('{"instruction": "Next {domain}?", "input_line": "Seen: {history}", "response": "Answer:"}')
    template = get_template(str(path))
    assert template.name == "short"
    assert template.text(["A", "B"], "toys") == 'Next toys?\n\nSeen: "A", "B"\n\nAnswer:'
    (tmp_path / "bad.json").write_text('{"instruction": "x", "input_line": "{history}", "colour": "red"}')
    with pytest.raises(ValueError, match="bad.json: not a prompt template"):
        get_template(str(tmp_path / "bad.json"))


ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. Write a "
          "response that appropriately completes the request. \n\n### Instruction:\n")


def test_minionerec_reference_layout_is_the_references_bytes():
    ours, reference = get_template("minionerec"), get_template("minionerec-reference")
    body = ("Can you predict the next possible item that the user may expect?\n\n### User Input: \nThe user has "
            "interacted with items <a_1><b_2>, <a_3><b_4> in chronological order. Can you predict the next possible "
            "item that the user may expect?\n\n### Response:")
    sids = ["<a_1><b_2>", "<a_3><b_4>"]
    assert reference.text(sids) == ALPACA + body + "\n" and reference.target_suffix == "\n"
    assert ours.text(sids) == ALPACA + body and ours.target_suffix == ""  # recalign's: the target follows directly


def test_minionerec_evaluation_prompt_is_the_references_eval_sid_dataset_bytes():
    # MiniOneRec's EvalSidDataset: T1's instruction block, another input line, "### Response:\n"
    evaluation = get_template("minionerec-eval-reference")
    assert evaluation.text(["<a_1><b_2>", "<a_3><b_4>"]) == (
        ALPACA + "Can you predict the next possible item that the user may expect?\n\n### User Input: \nCan you "
        "predict the next possible item the user may expect, given the following chronological interaction history: "
        "<a_1><b_2>, <a_3><b_4>\n\n### Response:\n")
    check_interchangeable(get_template("minionerec-reference"), evaluation)  # items and endings written alike
    with pytest.raises(ValueError, match=r"cannot stand in for 'minionerec'.*target_suffix '' vs '\\n'"):
        check_interchangeable(get_template("minionerec"), evaluation)  # a recalign-layout model ends items with EOS
    with pytest.raises(ValueError, match="layout 'sequence' vs 'text'"):
        check_interchangeable(get_template("sequence"), get_template("minionerec"))


def test_the_reference_layout_survives_a_json_round_trip(tmp_path):
    import json
    from dataclasses import asdict

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(asdict(get_template("minionerec-reference"))))
    loaded = get_template(str(path))
    assert loaded.text(["<a_1>"]) == get_template("minionerec-reference").text(["<a_1>"])
    assert loaded.block_separators == ("\n\n", "\n\n")
