"""The recipe: typed settings for every stage, read from YAML with errors that name the file and the setting.

The stages reuse the library's own configuration dataclasses (``PrepareOptions``, ``QuantizerConfig``,
``TrainConfig``, ``RecommenderConfig``, ``SFTConfig``, ``TCAConfig``, ``Selection``), so a recipe can set anything
the Python API can, under the same names.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path

from ..align.allmrec import Stage1Config
from ..align.allmrec_llm import Stage2Selection
from ..align.rl import RLConfig
from ..align.tca import TCAConfig
from ..cf import TrainConfig
from ..data import download as downloads
from ..data.formats import PrepareOptions
from ..decode.selection import Selection
from ..index.rqvae import QuantizerConfig
from ..index.sid import COLLISIONS
from ..index.text import MINILM
from ..llm.recommender import RecommenderConfig
from ..llm.tasks import SID_TASKS
from ..llm.train import SFTConfig

PACKAGED = Path(__file__).resolve().parent / "recipes"
FORMATS = ("synth", "csv", "amazon18", "amazon-raw", "minionerec", "movielens")
ALIGNMENTS = ("none", "tca")


class RecipeError(ValueError):
    """A recipe that cannot be run as written; the message names the file and the setting."""


@dataclass
class Synth:
    users: int = 3000
    items: int = 1500
    seed: int = 0


@dataclass
class DataStage:
    format: str = "synth"  # "synth": the embedded synthetic catalogue; else a `recalign data prepare` format
    source: str | None = None  # a dataset name (tca4rec:Toys_and_Games, fetched into the data cache) or the raw
    # files' folder (a relative path starts where `recalign run` runs)
    synth: Synth = field(default_factory=Synth)
    prepare: PrepareOptions = field(default_factory=PrepareOptions)


@dataclass
class IndexStage:
    """Semantic IDs for the catalogue (a recommender with ``identifier: sid`` reads them)."""

    source: str = "build"  # "build" (a quantiser over item text embeddings), "dataset" (the SIDs the data
    # carries, e.g. minionerec's), or the path of a *.index.json
    embedder: str = MINILM
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    collisions: str = "balance"

    def __post_init__(self) -> None:
        if self.collisions not in COLLISIONS:
            raise RecipeError(f"index.collisions must be one of {', '.join(COLLISIONS)}, not {self.collisions!r}")


@dataclass
class CFStage:
    model: str = "sasrec"
    preset: str | None = None
    settings: dict = field(default_factory=dict)  # the model's config fields (hidden, dropout, ...)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LLMStage:
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    train: SFTConfig = field(default_factory=SFTConfig)
    max_train_rows: int | None = None
    rows: str = "target"  # "target" (a row per training target) or "sequence" (the sequence objective)
    context_items: int = 1  # with rows "sequence": each window's leading history-only items
    align: str = "none"  # "none" or "tca" (soft labels from the recipe's CF model)
    tca: TCAConfig = field(default_factory=TCAConfig)  # alpha, beta, msl, tau, objective, faithful_mask
    selection: Selection = field(default_factory=Selection)
    # semantic-ID recommenders (recommender.identifier: sid) only
    tasks: tuple[str, ...] = SID_TASKS  # MiniOneRec's task mix (a title recommender trains next_item alone)
    sa_init: bool = False  # TS-Rec SA-Init of the SID token rows
    ts_align: bool = False  # TS-Rec TS-Align tasks in the mix
    semantics: str = "tfidf"  # token keywords/descriptions: "tfidf", "teacher", a teacher file or a dataset name
    # (tsrec:Industrial_and_Scientific)
    teacher: str | None = None  # the teacher LLM for semantics "teacher" (default: the backbone)
    max_examples: int | None = None  # examples drawn from the task mix, every task by the same fraction


@dataclass
class RLStage:
    """GRPO post-training of the llm stage's recommender over its constrained beams (``recalign llm rl``)."""

    train: RLConfig = field(default_factory=RLConfig)
    max_train_rows: int | None = None  # the first N training rows are the prompts (None: all)


def _frozen() -> RecommenderConfig:
    return RecommenderConfig(finetune="frozen")


def _stage2_training() -> SFTConfig:
    return SFTConfig(batch_size=4, micro_batch_size=2, lr=1e-4, weight_decay=0.0)


@dataclass
class AllmrecStage:
    """A-LLMRec over the recipe's CF model: stage 1 (the alignment network), then stage 2 (the projectors into a
    frozen LLM); evaluated on the candidate protocol beside the CF model."""

    embedder: str = MINILM
    stage1: Stage1Config = field(default_factory=Stage1Config)
    recommender: RecommenderConfig = field(default_factory=_frozen)  # backbone, precision, max_history, seed
    train: SFTConfig = field(default_factory=_stage2_training)
    soft_tokens: bool = True  # False: a prompt-only baseline, zero-shot (recommender.finetune: frozen, the paper's
    # LLM-only) or LoRA-tuned (finetune: lora, TALLRec-like)
    cf_dropout: bool = False  # stage 2's CF model in train mode (the official code); stage 1's is stage1.cf_dropout
    epochs: int = 1  # passes over the rows, fresh negatives each
    max_train_rows: int | None = None
    n_candidates: int = 20
    dataset_name: str = ""  # the Amazon category, for the prompt's words
    selection: Stage2Selection = field(default_factory=Stage2Selection)  # stage 2 until validation Hit@1 stops
    # rising (every: optimiser steps between validation rounds; 0: off)

    def __post_init__(self) -> None:
        if self.soft_tokens and self.recommender.finetune != "frozen":
            raise RecipeError("allmrec.recommender.finetune is frozen with soft tokens (only the projectors train); "
                              "without them frozen is the zero-shot baseline, lora or full the tuned one")
        if self.train.epochs != 1:
            raise RecipeError("allmrec.train.epochs must be 1: allmrec.epochs sets the passes (fresh negatives each)")


@dataclass
class EvalStage:
    split: str = "test"
    rows: int | None = None  # the split's first N rows, for every model alike (None: all)
    ks: tuple[int, ...] = (1, 5, 10)
    beams: int = 10
    batch_size: int = 8  # users per decoder call
    baselines: tuple[str, ...] = ("popularity", "random", "markov")
    seed: int = 0  # of the sampled candidate sets (A-LLMRec's protocol)


@dataclass
class Measured:
    """One measured run of the whole recipe as packaged: ``recalign run NAME`` from an empty run folder."""

    seconds: float
    machine: str  # the CPU (lscpu model name, cores) and GPU, if any
    gpu: bool  # whether the run had a GPU
    date: str = ""


@dataclass
class Runtime:
    gpu: bool = False  # needs a CUDA GPU: on a CPU it would run for days
    measured: tuple[Measured, ...] = ()


@dataclass
class Recipe:
    name: str
    description: str = ""
    runtime: Runtime = field(default_factory=Runtime)
    data: DataStage = field(default_factory=DataStage)
    index: IndexStage | None = None
    cf: CFStage | None = None
    llm: LLMStage | None = None
    rl: RLStage | None = None
    allmrec: AllmrecStage | None = None
    eval: EvalStage = field(default_factory=EvalStage)

    def __post_init__(self) -> None:
        if self.data.format not in FORMATS:
            raise RecipeError(f"data.format must be one of {', '.join(FORMATS)}, not {self.data.format!r}")
        if (self.data.format == "synth") == (self.data.source is not None):
            raise RecipeError("data.source names the raw files of every format but synth, which takes none")
        if self.data.source is not None and downloads.is_dataset_name(self.data.source):
            self.data.source = _checked_name(self.data.source, "data.source", self.data.format)
        if self.llm is not None:
            if self.llm.align not in ALIGNMENTS:
                raise RecipeError(f"llm.align must be one of {', '.join(ALIGNMENTS)}, not {self.llm.align!r}")
            if self.llm.align == "tca" and self.cf is None:
                raise RecipeError("llm.align: tca needs a cf stage (its soft labels come from the CF model)")
            if self.llm.recommender.use_feature and self.cf is None:
                raise RecipeError("llm.recommender.use_feature needs a cf stage (its embeddings are the features)")
            if self.llm.max_train_rows is not None and self.llm.max_train_rows < 1:
                raise RecipeError("llm.max_train_rows must be at least 1")
            sid = self.llm.recommender.identifier == "sid"
            if sid != (self.index is not None):
                raise RecipeError("llm.recommender.identifier: sid and an index stage go together")
            if not sid and (self.llm.sa_init or self.llm.ts_align or self.llm.tasks != SID_TASKS):
                raise RecipeError("llm.tasks, sa_init and ts_align apply to semantic-ID recommenders "
                                  "(llm.recommender.identifier: sid)")
            if downloads.is_dataset_name(self.llm.semantics):
                self.llm.semantics = _checked_name(self.llm.semantics, "llm.semantics", None)
        if self.rl is not None and self.llm is None:
            raise RecipeError("rl post-trains the llm stage's recommender: it needs an llm stage")
        if self.rl is not None and "cf" in self.rl.train.reward and self.cf is None:
            raise RecipeError("rl.train.reward cf needs a cf stage (the CF model judges the beams)")
        if self.allmrec is not None and self.cf is None:
            raise RecipeError("allmrec needs a cf stage (the frozen CF model it aligns)")
        if self.eval.beams < max(self.eval.ks):
            raise RecipeError(f"eval.beams ({self.eval.beams}) must be at least the largest K ({max(self.eval.ks)})")


def _checked_name(name: str, setting: str, data_format: str | None) -> str:
    """A dataset name of a recipe setting, spelled as the registry spells it, checked against what the setting reads:
    a data format (a dataset of that format), or None (a single file to point at)."""
    try:
        name = downloads.canonical_name(name)
    except ValueError as exc:
        raise RecipeError(f"{setting}: {exc}") from None
    published = downloads.PUBLISHED.get(name)
    if data_format is None:
        if published is None or published.target is None:
            raise RecipeError(f"{setting}: {name} is a dataset, not a single file this setting can read")
        return name
    expected = published.format if published else "amazon-raw"
    if expected != data_format:
        holds = f"{expected} data" if expected else f"no dataset (only {published.target})"
        raise RecipeError(f"{setting}: {name} holds {holds}, but data.format is {data_format}")
    return name


def named_data(recipe: Recipe) -> dict[str, str]:
    """The dataset names a recipe's settings give, by setting (``data.source``, ``llm.semantics``)."""
    named = {"data.source": recipe.data.source}
    if recipe.llm is not None:
        named["llm.semantics"] = recipe.llm.semantics
    return {setting: value for setting, value in named.items() if value and downloads.is_dataset_name(value)}


def with_local_data(recipe: Recipe, offline: bool = False, base_url: str | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> Recipe:
    """``recipe`` with every dataset name replaced by its path in the data cache, fetching what the cache lacks
    (``downloads.ensure``); with ``offline`` a missing dataset is a DownloadError naming the command to run."""
    paths = {setting: str(downloads.ensure(name, offline, base_url, progress, report=log))
             for setting, name in named_data(recipe).items()}
    data = replace(recipe.data, source=paths.get("data.source", recipe.data.source))
    llm = recipe.llm and replace(recipe.llm, semantics=paths.get("llm.semantics", recipe.llm.semantics))
    return replace(recipe, data=data, llm=llm)


def packaged_recipes() -> dict[str, Path]:
    """The recipes shipped with recalign, by name (``recalign run NAME``)."""
    return {path.stem: path for path in sorted(PACKAGED.glob("*.yaml"))}


def load_recipe(spec: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """A recipe from a YAML file, or a packaged recipe by name; ``overrides`` are ``dotted.setting=value`` strings
    (the value read as YAML: ``llm.train.lr=1e-3``, ``cf=null``, ``eval.ks=[1,10]``) applied on top."""
    import yaml

    path = Path(spec)
    if not path.is_file():
        if str(spec) in packaged_recipes():
            path = packaged_recipes()[str(spec)]
        else:
            raise RecipeError(f"{spec}: no such recipe file, and not a packaged recipe "
                              f"({', '.join(packaged_recipes())})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "name" not in raw:
        raise RecipeError(f"{path}: a recipe is a mapping with at least a name")
    for override in overrides:
        setting, equals, text = override.partition("=")
        if not equals or not setting:
            raise RecipeError(f"override {override!r} is not of the form dotted.setting=value")
        *parents, last = setting.split(".")
        node = raw
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        try:
            node[last] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"override {override!r}: the value is not valid YAML ({exc})") from None
    try:
        return build(Recipe, raw, "")
    except (RecipeError, ValueError, TypeError) as exc:
        raise RecipeError(f"{path}: {exc}") from None


def build(cls, value, where: str):
    """``value`` (parsed YAML) as an instance of dataclass ``cls``, checked field by field against its hints."""
    label = where.rstrip(".") or "the recipe"
    if not isinstance(value, dict):
        raise RecipeError(f"{label} must be a mapping, not {value!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise RecipeError(f"{label}: unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(known: {', '.join(known)})")
    missing = [n for n, f in known.items() if n not in value and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise RecipeError(f"{label}: missing {', '.join(missing)}")
    values = {name: convert(hints[name], item, f"{where}{name}") for name, item in value.items()}
    try:
        return cls(**values)
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{label}: {exc}") from None


def convert(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return convert(hint, value, where)
    if is_dataclass(hint):
        return build(hint, value, where + ".")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where} must be a list, not {value!r}")
        return tuple(convert(args[0], item, f"{where}[{n}]") for n, item in enumerate(value))
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    expected = {int: (int,), float: (int, float), str: (str,), bool: (bool,), dict: (dict,)}.get(hint)
    if expected and (not isinstance(value, expected) or (hint is not bool and isinstance(value, bool))):
        raise RecipeError(f"{where} must be {hint.__name__}, not {value!r}")
    return float(value) if hint is float else value
