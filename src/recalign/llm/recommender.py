"""The LLM recommender as one saved artefact: backbone (with its LoRA adapter or fine-tuned weights), tokenizer,
prompt template and the item index its identifiers come from.

``save_pretrained`` writes ``config.json``, ``items.json`` (raw id and title per item id, so the folder can
answer on its own), ``tokenizer/``, ``index/`` and either ``adapter/`` (LoRA on a named backbone, which is
reloaded from its spec) or ``model/`` (full fine-tuning, and the random ``tiny`` backbone, which is small).

With ``identifier="sid"`` items are semantic IDs (``recalign.index.sid``): their tokens are added to the
tokenizer, the embeddings resized (optionally initialised by ``token_init``, TS-Rec's SA-Init), and with LoRA the
new rows train too (peft's trainable tokens). Prompts then write each history item as its SID, and ``items.json``
keeps every item's SID.

With ``use_feature`` (TCA4Rec's CF features as soft tokens, ``recalign.align.features``) the tokenizer gains the
special tokens ``[UserEmb]`` and ``[ItemEmb]``, the embeddings are resized, and the recommender carries a
input-embedding hook (``recalign.align.features.CFFeatureInjector`` over a frozen CF model). The folder then also holds
``feature_injector.safetensors`` + ``feature_injector.json`` (the MLPs) and ``cf/`` (a copy of the CF model).

Beside a LoRA adapter, ``added_token_embeddings.safetensors`` holds the added tokens' rows as initialised (the
adapter holds none of them, or, for SID tokens, their trained rows).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ..data import Dataset, catalogue_fingerprint, check_same_catalogue
from ..data.sequences import UserSequences, chain_examples
from ..index import ItemIndex
from ..index.sid import SemanticIDs, sid_index, sid_text, sid_tokens
from ..index.titles import title_index
from ..precision import check_precision, resolve_precision
from .backbones import (
    SCRATCH_PREFIX,
    LoraSettings,
    apply_lora,
    load_backbone,
    scratch_config,
    seeded_draws,
    torch_dtype,
)
from .hooks import HOOK_RECORD, EmbeddingHook, load_hook, save_hook
from .prompts import (
    PLACEHOLDERS,
    PromptTemplate,
    check_interchangeable,
    encode_prompt,
    get_template,
    recent_items,
)
from .train import SFTExample, TargetSpan

# (placeholder user token id, placeholder item token id, LLM hidden size, config) -> the hook writing those rows
FeatureHookFactory = Callable[[int, int, int, "RecommenderConfig"], EmbeddingHook]
# (model, tokenizer, the SID tokens just added) -> writes their embedding rows (TS-Rec's SA-Init)
TokenInit = Callable[[Any, Any, list[str]], Any]

FINETUNE = ("lora", "full", "frozen")
IDENTIFIERS = ("title", "sid")
ADDED_ROWS = "added_token_embeddings.safetensors"


@dataclass
class RecommenderConfig:
    backbone: str = "smollm2-135m"  # "smollm2-135m", "tiny", a hub id or a local path
    precision: str = "auto"  # "auto" (bf16 where the hardware has it, else fp32: recalign.precision), "bf16" or
    # "fp32"; a created recommender holds (and saves) the resolved one
    finetune: str = "lora"  # "lora": adapters only; "full": every weight; "frozen": none (only a hook's weights
    # train, e.g. A-LLMRec's projectors)
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt: str = "tca4rec"  # a built-in template's name or a .json file of PromptTemplate fields
    domain: str = "items"  # the word the prompt uses for the catalogue ("games", "office products", ...)
    max_history: int = 10  # most recent history items written into the prompt
    seed: int = 0
    use_feature: bool = False  # CF embeddings at [UserEmb] / [ItemEmb] placeholders (TCA4Rec's --use_feature)
    feature_frozen: bool = False  # the reference's bug: the feature MLPs are never trained (random init)
    feature_shared_mlp: bool = False  # one MLP for CF users and items (the reference); default: one each
    identifier: str = "title"  # "title", or "sid": semantic-ID tokens added to the vocabulary (recalign.index.sid)

    def __post_init__(self) -> None:
        if self.finetune not in FINETUNE:
            raise ValueError(f"finetune must be one of {', '.join(FINETUNE)}, not {self.finetune!r}")
        if self.identifier not in IDENTIFIERS:
            raise ValueError(f"identifier must be one of {', '.join(IDENTIFIERS)}, not {self.identifier!r}")
        if (self.feature_frozen or self.feature_shared_mlp) and not self.use_feature:
            raise ValueError("feature_frozen and feature_shared_mlp apply to use_feature only")
        if self.backbone.startswith(SCRATCH_PREFIX) and self.finetune != "full":
            raise ValueError(f"a from-scratch backbone ({self.backbone}) trains every weight: finetune 'full'")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**{**self.lora, "targets": tuple(self.lora["targets"])})
        check_precision(self.precision)

    @property
    def saves_full_model(self) -> bool:
        return self.finetune == "full" or scratch_config(self.backbone) is not None


def check_feature_template(template: PromptTemplate, use_feature: bool) -> None:
    """A use_feature recommender needs a template writing the item placeholder once per item; a plain one must not
    write placeholders (they would be read as ordinary text)."""
    if use_feature and template.item_format.count(PLACEHOLDERS[1]) != 1:
        raise ValueError(f"use_feature needs a prompt template whose item_format holds {PLACEHOLDERS[1]} once (e.g. "
                         f"'tca4rec-feature'); {template.name!r} has item_format {template.item_format!r}")
    if use_feature and template.user_token not in ("", PLACEHOLDERS[0]):
        raise ValueError(f"with use_feature, user_token must be empty or {PLACEHOLDERS[0]}")
    if not use_feature and template.placeholders:
        raise ValueError(f"template {template.name!r} writes {', '.join(template.placeholders)}: it needs "
                         "use_feature (and a CF model)")


def add_placeholder_tokens(model: Any, tokenizer: Any, seed: int = 0) -> tuple[int, int]:
    """Adds [UserEmb] and [ItemEmb] to the tokenizer as special tokens (one id each, whatever text surrounds them)
    and resizes the model's embeddings (tied input/output embeddings stay tied); returns their ids.

    The new rows get transformers' mean resizing (the reference's default); its draw runs on a forked RNG seeded
    with ``seed``. The input rows never reach the decoder, since the feature hook overwrites them, so they need
    no training; with tied embeddings the head's rows only score the placeholders, which no target holds.
    """
    _add_tokens(model, tokenizer, list(PLACEHOLDERS), special=True, seed=seed)
    user_id, item_id = _placeholder_ids(tokenizer)
    return user_id, item_id


def add_sid_tokens(model: Any, tokenizer: Any, sids: list[list[str]], seed: int = 0) -> list[str]:
    """Adds the SID tokens the catalogue uses (sorted as strings, MiniOneRec's order) as ordinary added tokens and
    resizes the embeddings; the new rows get transformers' mean resizing (the reference's initialisation) on a
    forked RNG seeded with ``seed``. Returns the tokens that were new."""
    vocabulary = tokenizer.get_vocab()
    new = [t for t in sid_tokens(sids) if t not in vocabulary]
    _add_tokens(model, tokenizer, new, special=False, seed=seed)
    return new


def _add_tokens(model: Any, tokenizer: Any, tokens: list[str], special: bool, seed: int) -> None:
    """Adds ``tokens`` and grows the embeddings; the new rows' mean-resizing draw runs on a forked RNG seeded
    with ``seed``, so it depends on the seed alone and leaves the caller's random stream untouched."""
    tokenizer.add_tokens(tokens, special_tokens=special)
    with seeded_draws(seed):
        _fit_embeddings(model, len(tokenizer))


def _fit_embeddings(model: Any, n_tokens: int, mean_resizing: bool = True) -> None:
    """Grows the embeddings to ``n_tokens`` rows; a vocabulary padded beyond the tokenizer's (Qwen) already has
    room, and shrinking it would cut real rows."""
    if model.get_input_embeddings().num_embeddings < n_tokens:
        model.resize_token_embeddings(n_tokens, mean_resizing=mean_resizing)


class LLMRecommender:
    def __init__(self, model: Any, tokenizer: Any, index: ItemIndex, config: RecommenderConfig, titles: list[str],
                 raw_ids: list[str], template: PromptTemplate | None = None,
                 feature_injector: EmbeddingHook | None = None, sids: list[list[str]] | None = None,
                 added_rows: dict | None = None):
        self.model, self.tokenizer, self.index, self.config = model, tokenizer, index, config
        self.titles, self.raw_ids = titles, raw_ids
        self.template = template or get_template(config.prompt)
        self.feature_injector = feature_injector
        self.sids = sids
        # the added tokens' rows as initialised (placeholders, SIDs), which a LoRA adapter does not hold
        self.added_rows = added_rows or {}
        if config.use_feature and feature_injector is None:
            raise ValueError("use_feature needs a feature injector")
        if (config.identifier == "sid") != (sids is not None):
            raise ValueError("identifier 'sid' and semantic IDs go together")
        # how an item is written in prompts: its title, or its SID tokens
        self.identifiers = [sid_text(sid) for sid in sids] if sids is not None else titles

    @classmethod
    def create(cls, dataset: Dataset, config: RecommenderConfig, feature_hook: FeatureHookFactory | None = None,
               sids: SemanticIDs | None = None, token_init: TokenInit | None = None) -> LLMRecommender:
        """A fresh recommender for ``dataset``'s catalogue: the backbone, LoRA if asked, the item index (titles, or
        ``sids`` with ``config.identifier`` "sid"); with ``config.use_feature``, the placeholder tokens and the
        embedding hook ``feature_hook`` builds for them (e.g. ``partial(CFFeatureInjector.for_recommender,
        cf_model)`` from ``recalign.align.features``). ``token_init`` writes the new SID tokens' rows after the
        resize and before LoRA (TS-Rec's SA-Init, ``recalign.align.tsrec``)."""
        template = get_template(config.prompt)  # before loading the backbone: a bad name fails fast
        check_feature_template(template, config.use_feature)
        if config.use_feature != (feature_hook is not None):
            raise ValueError("use_feature needs a feature hook (e.g. CF features over a CF model), and only it")
        if (config.identifier == "sid") != (sids is not None):
            raise ValueError("identifier 'sid' needs semantic IDs (recalign.index.sid), and only it")
        if token_init is not None and sids is None:
            raise ValueError("token_init initialises SID tokens: it needs semantic IDs")
        if sids is not None:
            check_same_catalogue(sids.raw_ids, dataset, "set of semantic IDs")
        config = replace(config, precision=resolve_precision(config.precision))  # saved as resolved
        model, tokenizer = load_backbone(config.backbone, config.precision, config.seed)
        injector, added, trained_rows = None, [], []
        if feature_hook is not None:
            # Before LoRA: the adapters wrap the resized model. LoRA trains neither embedding matrix, and need not:
            # the hook overwrites the placeholders' input rows, so only the hook's own weights learn them.
            user_id, item_id = add_placeholder_tokens(model, tokenizer, config.seed)
            injector = feature_hook(user_id, item_id, model.get_input_embeddings().embedding_dim, config)
            added += list(PLACEHOLDERS)
        if sids is not None:
            new = add_sid_tokens(model, tokenizer, sids.sids, config.seed)
            if token_init is not None:
                token_init(model, tokenizer, new)
            added += new
            trained_rows = _token_ids(tokenizer, sid_tokens(sids.sids))
        rows = _added_rows(model, tokenizer, added)
        if config.finetune == "frozen":
            model.requires_grad_(False)
        if config.finetune == "lora":
            # SID tokens are new words: their rows must learn, which LoRA alone would never let them
            model = apply_lora(model, config.lora, _embedding_rows(model, trained_rows), config.seed)
        index = (sid_index(sids.sids, tokenizer, template.target_suffix) if sids is not None
                 else title_index(dataset.titles, tokenizer))
        return cls(model, tokenizer, index, config, dataset.titles, dataset.raw_ids, template, injector,
                   sids.sids if sids is not None else None, rows)

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        """Adds placeholder tokens (one id each, whatever text surrounds them) to a frozen recommender for an
        embedding hook to overwrite (A-LLMRec's soft tokens); returns their ids. Their rows are saved with it."""
        if self.config.finetune != "frozen":
            raise ValueError("special tokens are added to a frozen recommender only (a LoRA or fully trained one "
                             "would have to train their rows)")
        _add_tokens(self.model, self.tokenizer, tokens, special=True, seed=self.config.seed)
        self.model.requires_grad_(False)
        self.added_rows.update(_added_rows(self.model, self.tokenizer, tokens))
        return _token_ids(self.tokenizer, tokens)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def with_prompt(self, name: str) -> LLMRecommender:
        """The same model reading its prompts through another template (an evaluation prompt, e.g. MiniOneRec's
        ``minionerec-eval-reference``); refused unless items and their endings are written as in training."""
        template = get_template(name)
        check_interchangeable(self.template, template)
        return LLMRecommender(self.model, self.tokenizer, self.index, self.config, self.titles, self.raw_ids,
                              template, self.feature_injector, self.sids, self.added_rows)

    @property
    def embedding_hook(self) -> EmbeddingHook | None:
        """The input-embedding hook the SFT loop and the beam search need (None without features)."""
        return self.feature_injector

    def prompt(self, history: Sequence[int]) -> list[int]:
        if self.template.layout == "sequence":
            recent = recent_items(list(history), self.config.max_history)
            return self._header_ids + [token for item in recent for token in self.index.tokens(int(item))]
        written = [self.identifiers[int(item)] for item in history]
        return encode_prompt(self.tokenizer, self.template, written, self.config.domain, self.config.max_history)

    @cached_property
    def _header_ids(self) -> list[int]:
        """A sequence layout's text, tokenised once (the same for every prompt)."""
        return encode_prompt(self.tokenizer, self.template, [], self.config.domain)

    def examples(self, dataset: Dataset, split: str, max_rows: int | None = None,
                 label_mask: Callable[[list[int]], list[bool]] | None = None) -> list[SFTExample]:
        """(prompt, target identifier) pairs of a split; the target tokens are the index's, EOS included.
        ``label_mask`` picks the trained target tokens (default: all), e.g. TCA4Rec's faithful mask."""
        frame = dataset.split(split)
        if max_rows is not None:
            frame = frame.iloc[:max_rows]
        examples = []
        for history, target in zip(frame["history"], frame["target"]):
            target_ids = self.index.tokens(int(target))
            examples.append(SFTExample(prompt_ids=self.prompt(history), target_ids=target_ids, item=int(target),
                                       history=tuple(int(i) for i in history),
                                       label_mask=label_mask(target_ids) if label_mask else None))
        return examples

    def sequence_examples(self, dataset: Dataset, split: str, max_rows: int | None = None,
                          label_mask: Callable[[list[int]], list[bool]] | None = None,
                          context: int = 1) -> tuple[list[SFTExample], UserSequences]:
        """The sequence objective's rows: the split's examples (the first ``max_rows``) chained into each user's
        item sequence (``recalign.data.sequences.chain_examples``), cut into windows of ``max_history + 1`` items
        that overlap by ``context`` items. A window's first ``context`` items are its prompt's history; every
        later item is a target, trained on its identifier + EOS with the window's items before it as history, so
        each item after a sequence's first ``context`` is trained once. Needs the "sequence" layout."""
        if self.template.layout != "sequence":
            raise ValueError(f"the sequence objective needs a sequence-layout prompt (e.g. 'sequence'), not "
                             f"{self.template.name!r}")
        window = self.config.max_history + 1
        if not 1 <= context < window:
            raise ValueError(f"context must lie in [1, max_history], not {context} (max_history "
                             f"{self.config.max_history})")
        frame = dataset.split(split)
        if max_rows is not None:
            frame = frame.iloc[:max_rows]
        chained = chain_examples(frame["user_id"].to_numpy(), list(frame["history"]), frame["target"].to_numpy(),
                                 frame["timestamp"].to_numpy())
        examples = []
        for sequence in chained.sequences:
            for start in range(0, max(1, len(sequence) - context), window - context):
                items = [int(i) for i in sequence[start:start + window]]
                if len(items) > context:
                    examples.append(self._sequence_row(items, context, label_mask))
        return examples, chained

    def _sequence_row(self, items: list[int], context: int, label_mask) -> SFTExample:
        target_ids, mask, spans = [], [], []
        for position in range(context, len(items)):
            tokens = self.index.tokens(items[position])
            spans.append(TargetSpan(len(target_ids), len(tokens), items[position], tuple(items[:position])))
            target_ids += tokens
            mask += label_mask(tokens) if label_mask else [True] * len(tokens)
        return SFTExample(prompt_ids=self.prompt(items[:context]), target_ids=target_ids, item=items[-1],
                          history=tuple(items[:context]), label_mask=None if label_mask is None else mask,
                          spans=tuple(spans))

    # persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"recommender": asdict(self.config), "template": asdict(self.template), "n_items": len(self.raw_ids),
                  "catalogue_fingerprint": catalogue_fingerprint(self.raw_ids, self.titles),
                  "added_tokens": list(self.added_rows)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        items = [{"raw_id": raw, "title": title} for raw, title in zip(self.raw_ids, self.titles)]
        for item, sid in zip(items, self.sids or []):
            item["sid"] = sid
        (directory / "items.json").write_text(json.dumps(items, ensure_ascii=False) + "\n")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.index.save_pretrained(directory / "index")
        if self.config.saves_full_model:
            # merging rewrites the live model in place (peft); merge a copy so training can go on with its adapters
            model = self.model
            if hasattr(model, "merge_and_unload"):
                model = copy.deepcopy(model).merge_and_unload()
            model.save_pretrained(directory / "model")
        elif self.config.finetune == "lora":
            # The adapter holds no embedding matrices (only trained SID rows); the added rows as initialised are
            # saved beside it instead of the whole matrices that peft's "auto" would add.
            embeddings = False if self.added_rows else "auto"
            self.model.save_pretrained(directory / "adapter", save_embedding_layers=embeddings)
        if self.added_rows and not self.config.saves_full_model:  # frozen: the backbone and these rows
            _save_added_rows(self.added_rows, directory / ADDED_ROWS)
        if self.feature_injector is not None:
            save_hook(self.feature_injector, directory)
        else:  # a folder reused from a run with a hook must not load it back
            (directory / HOOK_RECORD).unlink(missing_ok=True)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dataset: Dataset | None = None, merge: bool = True,
                        device: str | None = None, precision: str | None = None) -> LLMRecommender:
        """Loads a saved recommender; with ``dataset``, refuses one whose catalogue differs. ``merge`` folds a
        LoRA adapter into the weights, which makes inference as fast as the bare backbone. ``precision`` ("auto",
        "bf16" or "fp32") loads the weights in another precision than the saved one (None keeps it)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(directory)
        saved, items = saved_catalogue(directory)
        config = RecommenderConfig(**saved["recommender"])
        config = replace(config, precision=resolve_precision(precision or config.precision))
        raw_ids, titles = [row["raw_id"] for row in items], [row["title"] for row in items]
        sids = [row["sid"] for row in items] if config.identifier == "sid" else None
        if dataset is not None:
            check_same_catalogue(raw_ids, dataset, "LLM recommender", trained_titles=titles)
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        rows = {}
        if (directory / "model").exists():
            model = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=torch_dtype(config.precision))
        else:
            model, _ = load_backbone(config.backbone, config.precision, config.seed)
            if saved.get("added_tokens"):
                with torch.random.fork_rng(devices=[]):  # the new rows are overwritten just below
                    _fit_embeddings(model, len(tokenizer), mean_resizing=False)
                rows = _load_added_rows(model, tokenizer, directory / ADDED_ROWS)
            if config.finetune == "lora":
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, directory / "adapter")
                if merge:
                    model = model.merge_and_unload()
            if config.finetune == "frozen":
                model.requires_grad_(False)
        if device is None:  # decoding is where a GPU pays most; under `accelerate launch`, this process's GPU
            from .train import launch_state

            device = str(launch_state().device)
        model.to(device).eval()
        injector = load_hook(directory, dataset).to(device) if (directory / HOOK_RECORD).exists() else None
        return cls(model, tokenizer, ItemIndex.from_pretrained(directory / "index"), config, titles, raw_ids,
                   PromptTemplate(**saved["template"]),  # the saved text, even if the template file changed since
                   injector, sids, rows)


def saved_catalogue(directory: str | Path) -> tuple[dict, list[dict]]:
    """A saved recommender's config.json and items.json (raw id, title, SID per item id), read without loading
    its model: commands check their item references against it before paying for the load."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise FileNotFoundError(f"{directory} is not a saved LLM recommender (no config.json)")
    saved = json.loads((directory / "config.json").read_text())
    if "recommender" not in saved:
        raise FileNotFoundError(f"{directory} is not a saved LLM recommender (its config.json is another kind)")
    return saved, json.loads((directory / "items.json").read_text())


def _placeholder_ids(tokenizer: Any) -> list[int]:
    return _token_ids(tokenizer, list(PLACEHOLDERS))


def _token_ids(tokenizer: Any, tokens: list[str]) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(token)) for token in tokens]


def _untied(model: Any) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()


def _embedding_rows(model: Any, ids: list[int]) -> dict[str, list[int]] | None:
    """peft's ``trainable_token_indices`` for ``ids``: the input embedding's rows, and the head's when it is not
    tied to them (peft follows a tied head on its own; an untied one would keep near-identical mean-resized rows,
    leaving the SID tokens indistinguishable to the head)."""
    if not ids:
        return None
    names = {id(module): name.rsplit(".", 1)[-1] for name, module in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())]: list(ids)}
    if _untied(model):
        rows[names[id(model.get_output_embeddings())]] = list(ids)
    return rows


def _added_rows(model: Any, tokenizer: Any, tokens: list[str]) -> dict:
    """token -> {"input": row, and "output": row for an untied head}, copied before any training."""
    embeddings = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = _untied(model)
    rows = {}
    for token, token_id in zip(tokens, _token_ids(tokenizer, tokens)):
        rows[token] = {"input": embeddings[token_id].detach().cpu().clone()}
        if untied:
            rows[token]["output"] = head.weight[token_id].detach().cpu().clone()
    return rows


def _save_added_rows(rows: dict, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    tokens = list(rows)
    tensors = {side: torch.stack([rows[t][side] for t in tokens]).contiguous() for side in rows[tokens[0]]}
    save_file(tensors, path, metadata={"tokens": json.dumps(tokens)})


def _load_added_rows(model: Any, tokenizer: Any, path: Path) -> dict:
    """Writes the saved rows of the added tokens into the resized ``model``; returns them by token."""
    import torch
    from safetensors import safe_open

    with safe_open(path, "pt", device="cpu") as handle:
        tokens = json.loads(handle.metadata()["tokens"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    ids = _token_ids(tokenizer, tokens)
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[ids] = tensors["input"].to(embeddings.dtype)
        if "output" in tensors:
            head = model.get_output_embeddings()
            head.weight[ids] = tensors["output"].to(head.weight.dtype)
    return {token: {side: tensors[side][row] for side in tensors} for row, token in enumerate(tokens)}
