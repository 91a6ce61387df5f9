"""Prompt templates: a user's history (item titles, oldest first) rendered into text and token ids.

The generated identifier (the target title's tokens, then EOS) always follows the ids of ``encode_prompt``
directly; the item index tokenizes titles with ``add_special_tokens=False``, so a prompt's ids plus a title's ids
are exactly what the model reads in training and continues at inference.

Token layout of the plain (TCA4Rec) template, as in TCA4Rec §1.3: the prompt tokenized with the tokenizer's own
special tokens, then one separator token, the tokenizer's BOS (Llama-3: <|begin_of_text|>, Qwen: none, hence
"<|im_start|>"). What SmolLM2-135M-Instruct's tokenizer (loaded from its GGUF file) does:
- ``add_special_tokens=True`` adds nothing, neither BOS nor EOS (Qwen-like, unlike Llama-3);
- bos = "<|im_start|>" (id 1), eos = "<|im_end|>" (id 2), pad = "<|im_end|>" (id 2, the same as EOS, so padding
  must be masked by the attention mask, never by comparing ids to pad), unk = "<|endoftext|>" (id 0);
- so its ids are ``prompt tokens + [1]``: the separator is "<|im_start|>", the same token TCA4Rec uses for Qwen;
- its chat template is ChatML with a default system message ("You are a helpful AI assistant named SmolLM, ...")
  when none is given; the generation prompt is "<|im_start|>assistant\\n", and an assistant turn ends with
  "<|im_end|>", its EOS, which makes the chat layout's target (title + EOS) a natural assistant answer.

CF features ("soft tokens", TCA4Rec's ``--use_feature``, §1.2): the ``tca4rec-feature`` template writes each
history item as ``"title"[ItemEmb]`` and prepends ``[UserEmb]`` to the whole prompt text (so it follows BOS where
the tokenizer adds one). The two placeholders are added to the tokenizer as special tokens
(``LLMRecommender.create`` with ``use_feature``), so each is one id, whatever text surrounds it; the embedding
hook (``recalign.align.features``) overwrites their input embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SEPARATORS = ("bos", "none")
LAYOUTS = ("text", "sequence")
QWEN_SEPARATOR = "<|im_start|>"
USER_PLACEHOLDER = "[UserEmb]"  # TCA4Rec's placeholder tokens for CF features
ITEM_PLACEHOLDER = "[ItemEmb]"
PLACEHOLDERS = (USER_PLACEHOLDER, ITEM_PLACEHOLDER)


@dataclass(frozen=True)
class PromptTemplate:
    """Three text blocks joined by blank lines: ``instruction`` (may use ``{domain}``), ``input_line`` (must use
    ``{history}``) and ``response``. Each item (its title, or its SID) is written as ``item_format`` (with
    ``{title}``) and the items are joined with ``joiner``. ``user_token`` is prepended to the whole (stripped)
    text, e.g. ``[UserEmb]``. ``chat`` sends the text as one user message through the tokenizer's chat template;
    ``separator`` ("bos" or "none") is the token appended after the prompt's ids.

    ``layout`` "sequence" puts the history after the text instead (which then has no ``{history}``): the prompt
    is the text's ids followed by each history item's identifier ids, EOS included, exactly as the model
    generates them. The ids before item j are then the prompt that asks for item j, so one row holding a whole
    sequence trains every next item at once (``LLMRecommender.sequence_examples``)."""

    name: str
    instruction: str
    input_line: str
    response: str
    item_format: str = '"{title}"'
    joiner: str = ", "
    chat: bool = False
    separator: str = "bos"
    user_token: str = ""
    layout: str = "text"
    # MiniOneRec's reference layout (``alpaca(..., reference=True)``): the text before the instruction / input
    # and before the response, what follows the stripped prompt ("\n" after "### Response:") and what every target
    # ends with before EOS ("\n")
    block_separators: tuple[str, str] = ("\n\n", "\n\n")
    suffix: str = ""
    target_suffix: str = ""

    def __post_init__(self) -> None:
        if self.separator not in SEPARATORS:
            raise ValueError(f"separator must be one of {', '.join(SEPARATORS)}, not {self.separator!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.layout == "sequence" and ("{history}" in self.input_line or self.chat or self.placeholders):
            raise ValueError(f"template {self.name!r}: a sequence layout writes the history after its text, so the "
                             "text has no {history}, no chat markup and no CF placeholders")
        if self.layout == "text" and "{history}" not in self.input_line:
            raise ValueError(f"template {self.name!r}: input_line has no {{history}} placeholder")
        object.__setattr__(self, "block_separators", tuple(self.block_separators))  # a list when read from JSON

    def text(self, history_titles: list[str], domain: str = "items") -> str:
        """The prompt text (for a chat template: the user message); placeholders are replaced literally, so titles
        holding braces are safe."""
        history = self.joiner.join(self.item_format.replace("{title}", title) for title in history_titles)
        first, second = self.block_separators
        text = (self.instruction.replace("{domain}", domain) + first + self.input_line.replace("{history}", history)
                + second + self.response)
        # TCA4Rec strips the whole string after substitution (§1.2), then prepends [UserEmb] with use_feature
        return self.user_token + text.strip() + self.suffix

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The CF-feature placeholders (``PLACEHOLDERS``) the template writes: none for a plain template."""
        text = self.user_token + self.item_format
        return tuple(token for token in PLACEHOLDERS if token in text)


# TCA4Rec's get_prompt, word for word: "recommendate" and the leftover movie sentence are the authors' and are kept
# for parity with their numbers.
TCA4REC = PromptTemplate(
    name="tca4rec",
    instruction="###Instruction:\nGiven the user interaction history, please recommendate the {domain} that user is "
                "most likely to view.",
    input_line="###Input:\nUser Interaction Histories: {history}.",
    response="Then the movie that user is most likely to watch is:\n###Response:",
)

CHAT = PromptTemplate(
    name="chat",
    instruction="Given the user interaction history, please recommend the {domain} that user is most likely to view.",
    input_line="User Interaction Histories: {history}.",
    response="Answer with the title only.",
    chat=True,
    separator="none",
)

# TCA4Rec's get_prompt with --use_feature (§1.2): '"title"[ItemEmb]' per history item, '[UserEmb]' before it all.
TCA4REC_FEATURE = replace(TCA4REC, name="tca4rec-feature", item_format='"{title}"' + ITEM_PLACEHOLDER,
                          user_token=USER_PLACEHOLDER)

ALPACA_HEADER = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                 "Write a response that appropriately completes the request. ")


def alpaca(name: str, instruction: str, user_input: str, reference: bool = False,
           short_instruction: bool = False) -> PromptTemplate:
    """MiniOneRec's prompt layout (TS-Rec §2.2): the Alpaca header, ``### Instruction:``, ``### User Input:`` and
    ``### Response:``. ``user_input`` holds ``{history}``: the items, or one text.

    recalign's layout strips the text, so the target follows ``### Response:`` directly and ends with EOS. With
    ``reference``, the reference's bytes: ``### Response:\n``, targets ending ``\n`` then EOS, and with
    ``short_instruction`` (TS-Align's block) a single newline, not a blank line, after the instruction."""
    template = PromptTemplate(name=name, instruction=f"{ALPACA_HEADER}\n\n### Instruction:\n{instruction}",
                              input_line=f"### User Input: \n{user_input}", response="### Response:",
                              item_format="{title}", separator="none")
    if not reference:
        return template
    return replace(template, name=f"{name}-reference", suffix="\n", target_suffix="\n",
                   block_separators=("\n" if short_instruction else "\n\n", "\n\n"))


# MiniOneRec's next-SID task (T1): the history SIDs, oldest first, joined by ", " as in the reference
MINIONEREC = alpaca(
    "minionerec", "Can you predict the next possible item that the user may expect?",
    "The user has interacted with items {history} in chronological order. Can you predict the next possible item "
    "that the user may expect?")

# the same with the reference's bytes (``### Response:\n``, targets ending "\n"): a reference checkpoint reads what
# it was trained on
MINIONEREC_REFERENCE = alpaca(
    "minionerec", "Can you predict the next possible item that the user may expect?",
    "The user has interacted with items {history} in chronological order. Can you predict the next possible item "
    "that the user may expect?", reference=True)

# MiniOneRec's evaluation prompt (its EvalSidDataset): T1's instruction block with another input line, so a
# reference checkpoint is evaluated as the official code evaluates it (`llm eval --prompt`)
MINIONEREC_EVAL_REFERENCE = alpaca(
    "minionerec-eval", "Can you predict the next possible item that the user may expect?",
    "Can you predict the next possible item the user may expect, given the following chronological interaction "
    "history: {history}", reference=True)

# The history at the end, each item as its identifier + EOS (titles or SIDs): the layout of the sequence objective
# (short: the header is paid once per row, and a row holds few items when histories are short)
SEQUENCE = PromptTemplate(name="sequence", instruction="The {domain} a user chose, oldest first:", input_line="",
                          response="", item_format="{title}", separator="none", layout="sequence")

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (TCA4REC, CHAT, TCA4REC_FEATURE, MINIONEREC,
                                                            MINIONEREC_REFERENCE, MINIONEREC_EVAL_REFERENCE,
                                                            SEQUENCE)}


def get_template(name: str) -> PromptTemplate:
    """A built-in template by name, or one read from a JSON file holding ``PromptTemplate``'s fields."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        fields = json.loads(path.read_text())
        try:
            return PromptTemplate(**{"name": path.stem, **fields})
        except TypeError as exc:
            raise ValueError(f"{path}: not a prompt template ({exc})") from None
    raise KeyError(f"unknown prompt template {name!r}: expected one of {', '.join(sorted(TEMPLATES))} or a .json "
                   "file with the fields of PromptTemplate")


def check_interchangeable(trained: PromptTemplate, other: PromptTemplate) -> None:
    """Refuses to read a model's prompts with a template that writes items, their endings or CF placeholders
    differently from the one it was trained with: only the surrounding words may change."""
    fields = ("layout", "item_format", "joiner", "target_suffix", "user_token", "chat", "separator")
    differ = [f"{name} {getattr(trained, name)!r} vs {getattr(other, name)!r}" for name in fields
              if getattr(trained, name) != getattr(other, name)]
    if differ:
        raise ValueError(f"prompt {other.name!r} cannot stand in for {trained.name!r}, which the model was trained "
                         f"with: {'; '.join(differ)}")


def recent_items(history_titles: list, max_history: int | None) -> list:
    if max_history is None:
        return list(history_titles)
    if max_history < 0:
        raise ValueError(f"max_history must be >= 0, not {max_history}")
    # history[-0:] would be the whole list, hence the explicit zero
    return list(history_titles[-max_history:]) if max_history else []


def render_prompt(tokenizer: Any, template: PromptTemplate, history_titles: list[str], domain: str = "items",
                  max_history: int | None = None) -> str:
    """The prompt as the model sees it (chat markup included, the separator token not), for display and logs."""
    text = template.text(recent_items(history_titles, max_history), domain)
    if not template.chat:
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


def separator_id(tokenizer: Any) -> int | None:
    """The BOS id; else "<|im_start|>" when the vocabulary has it (TCA4Rec's rule for Qwen); else None."""
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    token_id = tokenizer.convert_tokens_to_ids(QWEN_SEPARATOR)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def encode_prompt(tokenizer: Any, template: PromptTemplate, history_titles: list[str], domain: str = "items",
                  max_history: int | None = None) -> list[int]:
    """Token ids of the prompt, separator included; the target title's ids follow them directly.

    ``max_history`` keeps the most recent titles (None: all of them)."""
    text = render_prompt(tokenizer, template, history_titles, domain, max_history)
    # The chat markup already holds its special tokens; adding the tokenizer's own would duplicate a BOS.
    ids = list(tokenizer(text, add_special_tokens=not template.chat).input_ids)
    if template.separator == "bos":
        sep = separator_id(tokenizer)
        if sep is not None:
            ids.append(sep)
    return ids
