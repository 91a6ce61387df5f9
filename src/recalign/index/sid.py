"""Semantic IDs: each item a short sequence of added tokens such as ``<a_12><b_7><c_200>`` (level letter, code).

Built from item text embeddings by a residual quantiser (``rqvae``: RQ-VAE or RQ-KMeans), or imported from a
MiniOneRec ``*.index.json`` (raw item id -> list of tokens). Items whose codes coincide are *colliding*; the
``collisions`` setting decides what happens to them:

- ``keep``: left in place (the reference's shipped SIDs; evaluation then counts a colliding item as a hit);
- ``extra_level``: every member of a colliding group gets one more token, its rank in the group (``<d_0>``,
  ``<d_1>``, ...: MiniOneRec's RQ-KMeans disambiguation);
- ``balance``: colliding items move, nearest first, to the closest last-level code that no item with the same
  prefix holds; a prefix whose codes are all taken falls back to ``extra_level`` for what is left (counted).

A saved SID folder holds ``sids.json`` (raw id -> tokens, the MiniOneRec format) and ``config.json`` (how the IDs
were made, the catalogue fingerprint and the statistics). ``sid_index`` turns SIDs into the same ``ItemIndex`` the
title identifiers use, so constrained beam search, the metrics and TCA4Rec's soft labels serve both.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .rqvae import QuantizerConfig, rq_kmeans, train_rqvae
from .trie import ItemIndex

COLLISIONS = ("keep", "extra_level", "balance")
LEVEL_LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOKEN = re.compile(r"<([a-z])_(\d+)>")
SIDS_FILE = "sids.json"
CONFIG_FILE = "config.json"


def token(level: int, code: int) -> str:
    return f"<{LEVEL_LETTERS[level]}_{int(code)}>"


def sid_tokens(sids: list[list[str]]) -> list[str]:
    """The distinct tokens the SIDs use, sorted as strings (the order MiniOneRec adds them in)."""
    return sorted({t for sid in sids for t in sid})


def sid_text(sid: list[str]) -> str:
    return "".join(sid)


# statistics --------------------------------------------------------------------------------------------------------

@dataclass
class LevelStats:
    level: int
    codes_used: int
    codebook_size: int | None  # None where unknown (imported SIDs) or not quantised (a disambiguation level)
    perplexity: float  # exp(entropy of the code distribution): codebook_size when usage is uniform
    max_items_per_code: int


@dataclass
class SIDStats:
    items: int
    distinct: int
    collision_rate: float  # (items - distinct SIDs) / items
    colliding_groups: int
    colliding_items: int
    tokens: int  # distinct added tokens
    levels: list[LevelStats]

    def lines(self) -> list[str]:
        lines = [f"{self.items:,} items, {self.distinct:,} distinct SIDs, {self.tokens:,} tokens; collision rate "
                 f"{self.collision_rate:.2%} ({self.colliding_items:,} items in {self.colliding_groups:,} groups)"]
        for lv in self.levels:
            size = f" of {lv.codebook_size}" if lv.codebook_size else ""
            lines.append(f"level {LEVEL_LETTERS[lv.level]}: {lv.codes_used}{size} codes used, perplexity "
                         f"{lv.perplexity:.1f}, at most {lv.max_items_per_code} items per code")
        return lines


def sid_stats(sids: list[list[str]], codebook_size: int | None = None, quantised_levels: int = 0) -> SIDStats:
    groups = Counter(tuple(s) for s in sids)
    colliding = [n for n in groups.values() if n > 1]
    depth = max(len(s) for s in sids)
    levels = []
    for level in range(depth):
        counts = np.array(list(Counter(s[level] for s in sids if len(s) > level).values()), dtype=np.float64)
        p = counts / counts.sum()
        size = codebook_size if level < quantised_levels else None
        levels.append(LevelStats(level, len(counts), size, float(math.exp(-(p * np.log(p)).sum())),
                                 int(counts.max())))
    return SIDStats(items=len(sids), distinct=len(groups), collision_rate=1 - len(groups) / len(sids),
                    colliding_groups=len(colliding), colliding_items=sum(colliding), tokens=len(sid_tokens(sids)),
                    levels=levels)


# collisions -------------------------------------------------------------------------------------------------------

def _groups(codes: np.ndarray) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for item, row in enumerate(map(tuple, codes.tolist())):
        groups[row].append(item)
    return groups


def resolve_collisions(codes: np.ndarray, mode: str, last_residual: np.ndarray | None = None,
                       last_codebook: np.ndarray | None = None) -> tuple[list[list[str]], dict]:
    """Token SIDs from codes (N, levels) under ``mode``; ``balance`` needs the last level's residuals and codebook.
    Returns the SIDs and counts of what was done."""
    if mode not in COLLISIONS:
        raise ValueError(f"collisions must be one of {', '.join(COLLISIONS)}, not {mode!r}")
    codes = np.array(codes, dtype=np.int64)
    levels = codes.shape[1]
    done = {"moved": 0, "extra_level": 0}
    if mode == "balance":
        if last_residual is None or last_codebook is None:
            raise ValueError("balance needs the last level's residuals and codebook")
        done["moved"] = _balance_last_level(codes, last_residual, last_codebook)
    sids = [[token(level, c) for level, c in enumerate(row)] for row in codes.tolist()]
    if mode in ("extra_level", "balance"):
        for members in _groups(codes).values():
            if len(members) > 1:
                for rank, item in enumerate(members):
                    sids[item].append(token(levels, rank))
                done["extra_level"] += len(members)
    return sids, done


def _balance_last_level(codes: np.ndarray, residual: np.ndarray, codebook: np.ndarray) -> int:
    """Moves all but the closest member of each colliding group to the nearest free code under its prefix (in
    place); returns how many moved."""
    taken: dict[tuple, set[int]] = defaultdict(set)
    for row in codes.tolist():
        taken[tuple(row[:-1])].add(row[-1])
    moved = 0
    for members in _groups(codes).values():
        if len(members) < 2:
            continue
        members = np.array(members)
        distances = np.linalg.norm(residual[members, None, :] - codebook[None, :, :], axis=-1)
        own = distances[np.arange(len(members)), codes[members, -1]]
        for position in np.argsort(own, kind="stable")[1:]:  # the closest member keeps the code
            item = members[position]
            prefix = tuple(codes[item, :-1].tolist())
            for candidate in np.argsort(distances[position], kind="stable").tolist():
                if candidate not in taken[prefix]:
                    codes[item, -1] = candidate
                    taken[prefix].add(candidate)
                    moved += 1
                    break
    return moved


# building, importing, saving ---------------------------------------------------------------------------------------

@dataclass
class SemanticIDs:
    """One token list per item id, with the catalogue they belong to and how they were made."""

    sids: list[list[str]]
    raw_ids: list[str]
    meta: dict

    def __post_init__(self) -> None:
        if len(self.sids) != len(self.raw_ids):
            raise ValueError(f"{len(self.sids)} SIDs for {len(self.raw_ids)} items")
        for item, sid in enumerate(self.sids):
            if not sid:
                raise ValueError(f"item {self.raw_ids[item]} has an empty SID")

    @property
    def stats(self) -> SIDStats:
        quantizer = self.meta.get("quantizer", {})
        return sid_stats(self.sids, quantizer.get("codebook_size"), quantizer.get("levels", 0))

    def save_pretrained(self, directory: str | Path) -> Path:
        from ..data import catalogue_fingerprint

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SIDS_FILE).write_text(json.dumps(dict(zip(self.raw_ids, self.sids))) + "\n")
        config = {"kind": "sid", "n_items": len(self.raw_ids), "catalogue_fingerprint":
                  catalogue_fingerprint(self.raw_ids), **self.meta, "stats": asdict(self.stats)}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dataset=None) -> SemanticIDs:
        """A saved SID folder; with ``dataset``, its items in the dataset's item order (every item must have one)."""
        directory = Path(directory)
        if not (directory / SIDS_FILE).is_file():
            raise FileNotFoundError(f"{directory} is not a SID folder (no {SIDS_FILE}); build one with "
                                    "`recalign index build --kind sid` or `recalign index import`")
        meta = json.loads((directory / CONFIG_FILE).read_text()) if (directory / CONFIG_FILE).is_file() else {}
        meta = {k: v for k, v in meta.items() if k not in ("kind", "n_items", "catalogue_fingerprint", "stats")}
        mapping = read_index_json(directory / SIDS_FILE)
        raw_ids = dataset.raw_ids if dataset is not None else list(mapping)
        return cls(_in_order(mapping, raw_ids, directory / SIDS_FILE), raw_ids, meta)


def read_index_json(path: Path) -> dict[str, list[str]]:
    """raw id -> token list from a MiniOneRec-style ``*.index.json``, every token checked."""
    try:
        mapping = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"{path}: expected an object mapping item ids to token lists")
    for raw, sid in mapping.items():
        if not isinstance(sid, list) or not all(isinstance(t, str) and TOKEN.fullmatch(t) for t in sid):
            raise ValueError(f"{path}: item {raw!r}: expected a list of tokens like '<a_12>', got {sid!r}")
    return mapping


def _in_order(mapping: dict[str, list[str]], raw_ids: list[str], source: Path) -> list[list[str]]:
    missing = [raw for raw in raw_ids if raw not in mapping]
    if missing:
        raise ValueError(f"{source}: {len(missing)} of the dataset's {len(raw_ids)} items have no SID, e.g. item "
                         f"{missing[0]!r}")
    return [list(mapping[raw]) for raw in raw_ids]


def import_sids(dataset, source: str | Path | None = None) -> SemanticIDs:
    """SIDs from a ``*.index.json`` keyed by raw item id, or (``source`` None) from the dataset's ``sid`` column
    (the minionerec format keeps the shipped ones there)."""
    if source is None:
        if "sid" not in dataset.items.column_names:
            raise ValueError("the dataset carries no SIDs (no 'sid' column); pass a *.index.json file")
        sids = [list(s) for s in dataset.items.column("sid").to_pylist()]
        origin = "dataset"
    else:
        sids = _in_order(read_index_json(Path(source)), dataset.raw_ids, Path(source))
        origin = str(source)
    return SemanticIDs(sids, dataset.raw_ids, {"method": "imported", "source": origin, "collisions": "as given"})


def build_sids(embeddings: np.ndarray, raw_ids: list[str], config: QuantizerConfig, collisions: str = "balance",
               progress=None) -> tuple[SemanticIDs, list[dict]]:
    """Quantises the item embeddings into SIDs; returns them and the training log (empty for RQ-KMeans)."""
    import torch

    if collisions not in COLLISIONS:  # before training, not after it
        raise ValueError(f"collisions must be one of {', '.join(COLLISIONS)}, not {collisions!r}")
    if config.codebook_size > len(embeddings):
        raise ValueError(f"codebook size {config.codebook_size} exceeds the {len(embeddings)} items")
    log: list[dict] = []
    if config.method == "rqvae":
        model, log = train_rqvae(embeddings, config, progress)
        codes, last = model.encode(torch.from_numpy(np.asarray(embeddings, dtype=np.float32)))
        codes, last = codes.numpy(), last.numpy()
        last_codebook = model.quantizer.codebooks[-1].detach().numpy()
    else:
        codes, last, last_codebook = rq_kmeans(embeddings, config)
    sids, done = resolve_collisions(codes, collisions, last, last_codebook)
    before = sid_stats([[token(lv, c) for lv, c in enumerate(row)] for row in codes.tolist()])
    meta = {"method": config.method, "quantizer": asdict(config), "collisions": collisions,
            "collision_rate_before": before.collision_rate, "collision_repairs": done}
    return SemanticIDs(sids, list(raw_ids), meta), log


def sid_index(sids: list[list[str]], tokenizer, target_suffix: str = "") -> ItemIndex:
    """The item index of SIDs under a tokenizer that already holds every SID token as one id; ``target_suffix``
    (MiniOneRec's reference layout: "\n") follows every SID before EOS."""
    vocabulary = tokenizer.get_vocab()
    missing = [t for t in sid_tokens(sids) if t not in vocabulary]
    if missing:
        raise ValueError(f"{len(missing)} SID tokens are not in the tokenizer (e.g. {missing[0]}); add them first")
    suffix = list(tokenizer(target_suffix, add_special_tokens=False).input_ids) if target_suffix else []
    sequences = [[vocabulary[t] for t in sid] + suffix for sid in sids]
    meta = {"tokenizer": getattr(tokenizer, "name_or_path", ""), "levels": max(map(len, sids)),
            "target_suffix": target_suffix}
    return ItemIndex.from_sequences(sequences, tokenizer.eos_token_id, kind="sid", meta=meta)
