"""The LLM recommender as one saved artefact: backbone (with its LoRA adapter or fine-tuned weights), tokenizer,
prompt template and the item index its identifiers come from.

``save_pretrained`` writes ``config.json``, ``items.json`` (raw id and title per item id, so the folder can
answer on its own), ``tokenizer/``, ``index/`` and either ``adapter/`` (LoRA on a named backbone, which is
reloaded from its spec) or ``model/`` (full fine-tuning, and the random ``tiny`` backbone, which is small).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import Dataset, catalogue_fingerprint, check_same_catalogue
from ..index import ItemIndex
from ..index.titles import title_index
from .backbones import TINY_SPEC, LoraSettings, apply_lora, load_backbone, torch_dtype
from .prompts import PromptTemplate, encode_prompt, get_template
from .train import SFTExample

FINETUNE = ("lora", "full")


@dataclass
class RecommenderConfig:
    backbone: str = "smollm2-135m"  # "smollm2-135m", "tiny", a hub id or a local path
    precision: str = "bf16"
    finetune: str = "lora"  # "lora": adapters only; "full": every weight
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompt: str = "tca4rec"  # a built-in template's name or a .json file of PromptTemplate fields
    domain: str = "items"  # the word the prompt uses for the catalogue ("games", "office products", ...)
    max_history: int = 10  # most recent history items written into the prompt
    seed: int = 0

    def __post_init__(self) -> None:
        if self.finetune not in FINETUNE:
            raise ValueError(f"finetune must be one of {', '.join(FINETUNE)}, not {self.finetune!r}")
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**{**self.lora, "targets": tuple(self.lora["targets"])})
        torch_dtype(self.precision)

    @property
    def saves_full_model(self) -> bool:
        return self.finetune == "full" or self.backbone == TINY_SPEC


class LLMRecommender:
    def __init__(self, model: Any, tokenizer: Any, index: ItemIndex, config: RecommenderConfig, titles: list[str],
                 raw_ids: list[str], template: PromptTemplate | None = None):
        self.model, self.tokenizer, self.index, self.config = model, tokenizer, index, config
        self.titles, self.raw_ids = titles, raw_ids
        self.template = template or get_template(config.prompt)

    @classmethod
    def create(cls, dataset: Dataset, config: RecommenderConfig) -> LLMRecommender:
        """A fresh recommender for ``dataset``'s catalogue: the backbone, LoRA if asked, the title index."""
        template = get_template(config.prompt)  # before loading the backbone: a bad name fails fast
        model, tokenizer = load_backbone(config.backbone, config.precision, config.seed)
        if config.finetune == "lora":
            model = apply_lora(model, config.lora)
        index = title_index(dataset.titles, tokenizer)
        return cls(model, tokenizer, index, config, dataset.titles, dataset.raw_ids, template)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def prompt(self, history: Sequence[int]) -> list[int]:
        titles = [self.titles[int(item)] for item in history]
        return encode_prompt(self.tokenizer, self.template, titles, self.config.domain, self.config.max_history)

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

    # persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"recommender": asdict(self.config), "template": asdict(self.template), "n_items": len(self.raw_ids),
                  "catalogue_fingerprint": catalogue_fingerprint(self.raw_ids)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        items = [{"raw_id": raw, "title": title} for raw, title in zip(self.raw_ids, self.titles)]
        (directory / "items.json").write_text(json.dumps(items, ensure_ascii=False) + "\n")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.index.save_pretrained(directory / "index")
        if self.config.saves_full_model:
            model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
            model.save_pretrained(directory / "model")
        else:
            self.model.save_pretrained(directory / "adapter")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dataset: Dataset | None = None,
                        merge: bool = True) -> LLMRecommender:
        """Loads a saved recommender; with ``dataset``, refuses one whose catalogue differs. ``merge`` folds a
        LoRA adapter into the weights, which makes inference as fast as the bare backbone."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory} is not a saved LLM recommender (no config.json)")
        saved = json.loads((directory / "config.json").read_text())
        config = RecommenderConfig(**saved["recommender"])
        items = json.loads((directory / "items.json").read_text())
        raw_ids, titles = [row["raw_id"] for row in items], [row["title"] for row in items]
        if dataset is not None:
            check_same_catalogue(raw_ids, dataset, "LLM recommender")
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        if (directory / "model").exists():
            model = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=torch_dtype(config.precision))
        else:
            from peft import PeftModel

            base, _ = load_backbone(config.backbone, config.precision, config.seed)
            model = PeftModel.from_pretrained(base, directory / "adapter")
            if merge:
                model = model.merge_and_unload()
        model.eval()
        return cls(model, tokenizer, ItemIndex.from_pretrained(directory / "index"), config, titles, raw_ids,
                   PromptTemplate(**saved["template"]))  # the saved text, even if the template file changed since
