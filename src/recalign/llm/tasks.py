"""The SFT task mix of a semantic-ID recommender (MiniOneRec / TS-Rec §2.3, the 3-task version TS-Rec trains):

- ``next_item`` (T1): history SIDs -> the next item's SID (the recommendation task; TCA4Rec's soft labels apply);
- ``title_to_sid`` and ``sid_to_title`` (T2): one example per distinct title (title -> SID) and one per distinct
  SID (SID -> title) over the whole catalogue, the answer not leaked into the prompt (the reference's fixed T2);
- ``next_title`` (T3): history SIDs -> the next item's title.

A title recommender has ``next_item`` only. Every example's target ends in EOS; only ``next_item`` targets are
identifiers of the item index, so only they carry the target item (``SFTExample.item``) for loss hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from .prompts import alpaca, encode_prompt
from .train import SFTExample

SID_TASKS = ("next_item", "title_to_sid", "sid_to_title", "next_title")

TITLE_TO_SID = alpaca("title-to-sid", "Answer the question about item identification.",
                      "Which item has the title: {history}?")
SID_TO_TITLE = alpaca("sid-to-title", "Answer the question about item identification.",
                      'What is the title of item "{history}"?')
NEXT_TITLE = alpaca("next-title", "Can you recommend the next item for the user based on their interaction history?",
                    "The user has sequentially interacted with items {history}. Can you recommend the next item for "
                    "him? Tell me the title of the item")


def text_target(tokenizer, text: str, suffix: str = "") -> list[int]:
    """The text's ids, then EOS; ``suffix`` ("\n" in MiniOneRec's reference layout) ends the text first."""
    return list(tokenizer(text + suffix, add_special_tokens=False).input_ids) + [int(tokenizer.eos_token_id)]


def in_layout(template, like) -> object:
    """``template`` in the prompt layout of ``like`` (the recommender's): the reference's bytes when it has them."""
    if not like.target_suffix:
        return template
    return replace(template, name=f"{template.name}-reference", suffix=like.suffix, target_suffix=like.target_suffix)


def check_tasks(tasks: tuple[str, ...], identifier: str) -> None:
    unknown = [t for t in tasks if t not in SID_TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown or no tasks {unknown}: expected some of {', '.join(SID_TASKS)}")
    if identifier != "sid" and set(tasks) != {"next_item"}:
        raise ValueError("a title recommender trains the next_item task only; the others need semantic IDs")


ROW_KINDS = ("target", "sequence")


def task_examples(recommender, dataset, split: str, tasks: tuple[str, ...] = SID_TASKS, max_rows: int | None = None,
                  label_mask: Callable[[list[int]], list[bool]] | None = None, rows: str = "target",
                  context: int = 1) -> dict[str, list[SFTExample]]:
    """Examples per task (``max_rows`` limits the split's rows, not the catalogue tasks). ``rows`` "sequence"
    makes ``next_item`` the sequence objective's rows (``LLMRecommender.sequence_examples`` with ``context``);
    "target" keeps one row per target, the papers' setting."""
    if rows not in ROW_KINDS:
        raise ValueError(f"rows must be one of {', '.join(ROW_KINDS)}, not {rows!r}")
    check_tasks(tuple(tasks), recommender.config.identifier)
    tokenizer = recommender.tokenizer
    layout = recommender.template

    def encode(template, text: str) -> list[int]:
        return encode_prompt(tokenizer, template, [text])

    out: dict[str, list[SFTExample]] = {}
    if "next_item" in tasks:
        out["next_item"] = (recommender.sequence_examples(dataset, split, max_rows, label_mask, context)[0]
                            if rows == "sequence" else recommender.examples(dataset, split, max_rows, label_mask))
    if "title_to_sid" in tasks:
        first_with_title = {}
        for item, title in enumerate(recommender.titles):
            first_with_title.setdefault(title, item)
        out["title_to_sid"] = [SFTExample(encode(in_layout(TITLE_TO_SID, layout), title),
                                          recommender.index.tokens(item)) for title, item in first_with_title.items()]
    if "sid_to_title" in tasks:
        first_with_sid = {}
        for item, sid in enumerate(recommender.identifiers):
            first_with_sid.setdefault(sid, item)
        out["sid_to_title"] = [SFTExample(encode(in_layout(SID_TO_TITLE, layout), sid),
                                          text_target(tokenizer, recommender.titles[item], layout.target_suffix))
                               for sid, item in first_with_sid.items()]
    if "next_title" in tasks:
        frame = dataset.split(split)
        if max_rows is not None:
            frame = frame.iloc[:max_rows]
        template, limit = in_layout(NEXT_TITLE, layout), recommender.config.max_history
        out["next_title"] = [
            SFTExample(encode_prompt(tokenizer, template, [recommender.identifiers[int(i)] for i in history],
                                     max_history=limit),
                       text_target(tokenizer, recommender.titles[int(target)], layout.target_suffix))
            for history, target in zip(frame["history"], frame["target"])]
    return out


def mix_tasks(per_task: dict[str, list[SFTExample]], budget: int | None = None,
              seed: int = 0) -> tuple[list[SFTExample], dict[str, int]]:
    """The tasks' examples in one list, and how many each task gave. With ``budget`` (fewer rows than all), each
    task keeps the same random fraction, so the mix keeps the natural proportions the reference trains with."""
    import random

    total = sum(map(len, per_task.values()))
    fraction = 1.0 if budget is None or budget >= total else budget / total
    rng = random.Random(seed)
    mixed, counts = [], {}
    for name, examples in per_task.items():
        keep = examples if fraction == 1.0 else rng.sample(examples, round(len(examples) * fraction))
        mixed += keep
        counts[name] = len(keep)
    return mixed, counts
