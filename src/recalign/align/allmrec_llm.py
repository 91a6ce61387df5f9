"""A-LLMRec stage 2: a frozen LLM reads projected CF knowledge as soft tokens and picks the next item among
candidates (shared/reference/allmrec.md §3-4).

The prompt (the official wording, the structure that matters) starts with ``[UserRep]``, then the history titles,
each in quotes followed by ``[HistoryEmb]``, then the candidate titles, each followed by ``[CandidateEmb]``; the
target is the next item's title (its identifier in the title index) and EOS. ``ALLMRecHook`` overwrites the
placeholders' input embeddings: ``[UserRep]`` with F_U(x_u) (x_u the frozen CF model's user vector of the
history), each item placeholder with F_I(e_i) (e_i the stage-1 joint embedding: enc_I of the CF item embedding for
items the CF model saw, enc_T of the text embedding for the others). F_U = Linear -> LayerNorm -> LeakyReLU ->
Linear, F_I = Linear -> LayerNorm -> GELU -> Linear; only they train, the LLM is frozen. The CF model is in eval
mode; ``cf_dropout`` keeps it in train mode while the projectors train (dropout on x_u), as the official code.

Two baselines use the same prompt without any soft token: the paper's *LLM-only* is the LLM zero-shot
(``finetune="frozen"``: nothing trains), and a TALLRec-like one LoRA-tunes the LLM (``finetune="lora"``).

Candidates: the target and ``n_candidates - 1`` items sampled uniformly among those outside the history (fresh per
epoch in training, seeded in evaluation), shuffled; or, for a full-catalogue protocol, the CF model's top items
("retrieved": the target is not added). Decoding is the title-trie beam search restricted to the candidates'
titles (a per-user item index), so every answer is a candidate id; the paper's lenient check (free greedy
generation with repetition penalty 1.5, a hit when the target title is a substring of it) is reported beside.

Training runs a fixed number of passes, or (``Stage2Selection``) in validation rounds until the validation Hit@1
stops rising, the best round's model kept; ``candidate_hits`` gives each evaluated row's hit and groups, so models
judged on the same rows and seed compare row by row.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..cf.base import CFModel
from ..cf.base import from_pretrained as load_cf_model
from ..llm.backbones import seeded_draws
from ..llm.hooks import EmbeddingHook, overwrite_rows
from ..llm.train import SFTExample

USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN = "[UserRep]", "[HistoryEmb]", "[CandidateEmb]"
SOFT_TOKENS = (USER_TOKEN, HISTORY_TOKEN, CANDIDATE_TOKEN)
WEIGHTS, CONFIG, JOINT, CF_FOLDER = "allmrec_projectors.safetensors", "allmrec_projectors.json", "joint.npy", "cf"
# verb, noun, verb of the recommendation, per Amazon category (the official prompt)
WORDS = {"Movies_and_TV": ("watched", "movie", "watch"), "Video_Games": ("played", "game", "play")}
DEFAULT_WORDS = ("bought", "item", "buy")
PROTOCOLS = ("sampled", "retrieved")


@dataclass(frozen=True)
class PromptWords:
    verb: str = "bought"
    noun: str = "item"
    verb_next: str = "buy"

    @classmethod
    def for_dataset(cls, name: str) -> PromptWords:
        return cls(*WORDS.get(name, DEFAULT_WORDS))


def prompt_text(history_titles: Sequence[str], candidate_titles: Sequence[str], words: PromptWords,
                soft_tokens: bool) -> str:
    """The official prompt's structure; without soft tokens (the LLM-only baseline) the placeholders and the
    user-representation sentence are left out."""
    history_mark, candidate_mark = (HISTORY_TOKEN, CANDIDATE_TOKEN) if soft_tokens else ("", "")
    history = ",".join(f'"{t}"{history_mark}' for t in history_titles)
    candidates = ",".join(f'"{t}"{candidate_mark}' for t in candidate_titles)
    opening = f"{USER_TOKEN} is a user representation. " if soft_tokens else ""
    return (f"{opening}This user has {words.verb} {history} in the previous. Recommend one next {words.noun} for "
            f"this user to {words.verb_next} next from the following {words.noun} title set, {candidates}. "
            "The recommendation is:\n")


def sample_candidates(n_items: int, history: Sequence[int], target: int, n: int, rng: np.random.Generator) -> list[int]:
    """The target and ``n - 1`` distinct items outside the history and the target, in a random order."""
    excluded = {int(i) for i in history} | {int(target)}
    if n_items - len(excluded) < n - 1:
        raise ValueError(f"only {n_items - len(excluded)} items are outside a history, {n - 1} negatives asked")
    negatives: list[int] = []
    while len(negatives) < n - 1:
        for item in rng.integers(0, n_items, 2 * n).tolist():
            if item not in excluded and item not in negatives:
                negatives.append(item)
                if len(negatives) == n - 1:
                    break
    candidates = [int(target), *negatives]
    return [candidates[i] for i in rng.permutation(n)]


def projector(in_dim: int, hidden: int, activation: nn.Module) -> nn.Sequential:
    layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), activation, nn.Linear(hidden, hidden))
    for layer in (layers[0], layers[3]):
        nn.init.xavier_normal_(layer.weight)
    return layers


@dataclass(frozen=True)
class ProjectorConfig:
    user_token_id: int
    history_token_id: int
    candidate_token_id: int
    hidden_size: int
    max_history: int = 10
    seed: int = 0
    cf_dropout: bool = False  # the CF model in train mode while the projectors train (the official code)


class ALLMRecHook(EmbeddingHook):
    """Writes F_U(x_u) at ``[UserRep]`` and F_I(joint embedding) at every ``[HistoryEmb]`` / ``[CandidateEmb]``.

    Each row's context (``SFTExample.history``) is ``(history, candidates)``: the user's history (the CF model
    reads all of it; the prompt shows the last ``max_history``) and the candidates in prompt order."""

    def __init__(self, cf_model: CFModel, joint: torch.Tensor, user_token_id: int, history_token_id: int,
                 candidate_token_id: int, hidden_size: int, max_history: int = 10, seed: int = 0,
                 cf_dropout: bool = False):
        super().__init__()
        self.config = ProjectorConfig(user_token_id, history_token_id, candidate_token_id, hidden_size, max_history,
                                      seed, cf_dropout)
        self.cf_model = cf_model.eval().requires_grad_(False)
        self.register_buffer("joint", joint.float())
        with torch.no_grad():
            user_dim = cf_model.user_vectors(cf_model.pad([np.zeros(1, dtype=np.int64)])).shape[-1]
        with seeded_draws(seed):
            self.user_projector = projector(user_dim, hidden_size, nn.LeakyReLU(0.01))
            self.item_projector = projector(joint.shape[1], hidden_size, nn.GELU())

    def train(self, mode: bool = True) -> ALLMRecHook:
        super().train(mode)
        self.cf_model.train(mode and self.config.cf_dropout)
        return self

    def shown(self, history: Sequence[int]) -> list[int]:
        items = [int(i) for i in history]
        return items[-self.config.max_history:] if self.config.max_history else []

    def forward(self, embeds: torch.Tensor, input_ids: torch.Tensor, contexts: Sequence) -> torch.Tensor:
        config = self.config
        device = self.joint.device
        rows, cols, values = [], [], []
        for token, pick in ((config.history_token_id, lambda c: self.shown(c[0])),
                            (config.candidate_token_id, lambda c: [int(i) for i in c[1]])):
            mask = input_ids == token
            items = [pick(c) for c in contexts]
            for row, (count, shown) in enumerate(zip(mask.sum(1).tolist(), items)):
                if count != len(shown):
                    raise ValueError(f"row {row} holds {count} placeholder(s) {token} for {len(shown)} items")
            where = mask.nonzero(as_tuple=True)  # row-major: each row's placeholders left to right
            if len(where[0]):
                ids = torch.tensor([i for shown in items for i in shown], dtype=torch.long, device=device)
                rows.append(where[0])
                cols.append(where[1])
                values.append(self.item_projector(self.joint[ids]))
        mask = input_ids == config.user_token_id
        if bool((mask.sum(1) > 1).any()):
            raise ValueError(f"a row holds more than one {USER_TOKEN}")
        user_rows, user_cols = mask.nonzero(as_tuple=True)
        if len(user_rows):
            histories = [np.asarray(contexts[r][0], dtype=np.int64) for r in user_rows.tolist()]
            with torch.no_grad():
                users = self.cf_model.user_vectors(self.cf_model.pad(histories).to(device)).float()
            rows.append(user_rows)
            cols.append(user_cols)
            values.append(self.user_projector(users))
        return overwrite_rows(embeds, rows, cols, values)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                   if not k.startswith("cf_model.") and k != "joint"}
        save_file(weights, directory / WEIGHTS)
        (directory / CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        np.save(directory / JOINT, self.joint.cpu().numpy())
        self.cf_model.save_pretrained(directory / CF_FOLDER)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dataset=None) -> ALLMRecHook:
        directory = Path(directory)
        config = json.loads((directory / CONFIG).read_text())
        hook = cls(load_cf_model(directory / CF_FOLDER, dataset), torch.from_numpy(np.load(directory / JOINT)),
                   **config)
        missing, unexpected = hook.load_state_dict(load_file(directory / WEIGHTS), strict=False)
        if unexpected or [k for k in missing if not k.startswith("cf_model.") and k != "joint"]:
            raise ValueError(f"{directory / WEIGHTS} does not match the projectors' layout")
        return hook.eval()


# examples, training and evaluation ------------------------------------------------------------------------------

def encode(recommender, history: Sequence[int], candidates: Sequence[int], words: PromptWords,
           soft_tokens: bool) -> list[int]:
    limit = recommender.config.max_history
    shown = [int(i) for i in history][-limit:] if limit else []
    text = prompt_text([recommender.titles[i] for i in shown], [recommender.titles[int(i)] for i in candidates],
                       words, soft_tokens)
    return list(recommender.tokenizer(text, add_special_tokens=True).input_ids)


def stage2_examples(recommender, dataset, words: PromptWords, soft_tokens: bool, n_candidates: int, seed: int,
                    max_rows: int | None = None, rows: str = "all") -> list[SFTExample]:
    """Training rows (``rows``: all, or the last per user; see ``allmrec.training_frame``): prompt with sampled
    candidates (seeded by ``seed``, so fresh per epoch when it is), target = the target's title identifier and
    EOS."""
    from .allmrec import training_frame

    frame = training_frame(dataset, rows)
    if max_rows is not None:
        frame = frame.iloc[:max_rows]
    rng = np.random.default_rng(seed)
    examples = []
    for history, target in zip(frame["history"], frame["target"]):
        history = tuple(int(i) for i in history)
        candidates = tuple(sample_candidates(dataset.n_items, history, int(target), n_candidates, rng))
        examples.append(SFTExample(encode(recommender, history, candidates, words, soft_tokens),
                                   recommender.index.tokens(int(target)), item=int(target),
                                   history=(history, candidates)))
    return examples


def candidate_index(recommender, candidates: Sequence[int]):
    """The item index of the candidates' titles alone (leaf items are positions in ``candidates``)."""
    from ..index import ItemIndex

    return ItemIndex.from_sequences([recommender.index.tokens(int(c))[:-1] for c in candidates],
                                    recommender.index.eos_id, kind="title")


def pick(recommender, history: Sequence[int], candidates: Sequence[int], words: PromptWords, soft_tokens: bool,
         num_beams: int = 1) -> list[list[int]]:
    """The candidates as the constrained search ranks them, one group per generated title (greedy with one beam:
    only its choice); candidates sharing a title form one group."""
    from ..decode import BeamConfig, beam_search

    index = candidate_index(recommender, candidates)
    prompt = encode(recommender, history, candidates, words, soft_tokens)
    hook = recommender.embedding_hook
    (ranked,) = beam_search(recommender.model, [prompt], index, BeamConfig(num_beams=num_beams, length_penalty=0.0),
                            recommender.pad_id, hook, [(tuple(history), tuple(candidates))] if hook else None)
    return [[int(candidates[i]) for i in index.leaf_items(leaf).tolist()] for leaf in ranked.leaves]


def lenient_hit(recommender, history: Sequence[int], candidates: Sequence[int], target: int, words: PromptWords,
                soft_tokens: bool, max_new_tokens: int = 40) -> bool:
    """The paper's check: free greedy generation (repetition penalty 1.5 on generated tokens only, as with the
    official embeddings-only call), a hit when the target title is a substring of it (case-insensitive)."""
    from ..llm.hooks import hooked_embeddings

    prompt = torch.tensor([encode(recommender, history, candidates, words, soft_tokens)])
    model = recommender.model
    device = next(model.parameters()).device
    prompt = prompt.to(device)
    hook = recommender.embedding_hook
    with torch.no_grad(), warnings.catch_warnings():
        # transformers warns that the penalty skips the prompt: exactly the official call's behaviour, not news
        warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
        embeds = (hooked_embeddings(model, prompt, hook, [(tuple(history), tuple(candidates))]) if hook
                  else model.get_input_embeddings()(prompt))
        output = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt), do_sample=False,
                                num_beams=1, max_new_tokens=max_new_tokens, repetition_penalty=1.5,
                                pad_token_id=recommender.pad_id)
    text = recommender.tokenizer.decode(output[0], skip_special_tokens=True).strip().lower()
    return recommender.titles[int(target)].lower() in text


def candidate_sets(dataset, split: str, protocol: str, n_candidates: int, seed: int, max_rows: int | None,
                   cf_model: CFModel | None = None) -> list[list[int]]:
    """Per evaluated row: ``sampled`` (the target + random negatives, seeded) or ``retrieved`` (the CF model's top
    ``n_candidates`` over the whole catalogue; the target is in them only if the CF model found it)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    frame = dataset.split(split).iloc[:max_rows]
    if protocol == "sampled":
        rng = np.random.default_rng(seed)
        return [sample_candidates(dataset.n_items, h, int(t), n_candidates, rng)
                for h, t in zip(frame["history"], frame["target"])]
    if cf_model is None:
        raise ValueError("the retrieved protocol needs a CF model")
    scores = cf_model.score([np.asarray(h, dtype=np.int64) for h in frame["history"]])
    return np.argsort(-scores, axis=1, kind="stable")[:, :n_candidates].tolist()


def item_groups(dataset, split: str, max_rows: int | None, warm_share: float = 0.35) -> dict[str, np.ndarray]:
    """Row masks: targets whose training interaction count is in the top ``warm_share`` of the items' counts (warm)
    or in the bottom (cold; ties at the quantile included), as the paper's §5.2.2, and rows whose user has no
    training row (cold users)."""
    from .allmrec import interaction_counts

    counts = interaction_counts(dataset)
    frame = dataset.split(split).iloc[:max_rows]
    target_counts = counts[frame["target"].to_numpy().astype(np.int64)]
    train_users = set(dataset.split("train")["user"].tolist())
    cold = target_counts <= np.quantile(counts, warm_share)
    return {"all": np.ones(len(frame), dtype=bool),
            "warm items": (target_counts >= np.quantile(counts, 1 - warm_share)) & ~cold,  # disjoint when tied
            "cold items": cold,
            "cold users": np.array([u not in train_users for u in frame["user"]])}


# the stage as a whole (the CLI and the pipeline) ---------------------------------------------------------------

RECORD = "allmrec.json"


def create_stage2(dataset, cf_model: CFModel, joint: np.ndarray | None, config, cf_dropout: bool = False):
    """A recommender for stage 2: with ``joint`` (stage 1's joint embeddings) A-LLMRec's frozen LLM with the soft
    tokens and the projectors; without, the LLM-only baseline (``config.finetune`` decides how the LLM trains)."""
    from ..llm.recommender import LLMRecommender

    if joint is not None and len(joint) != dataset.n_items:
        raise ValueError(f"stage 1's joint embeddings cover {len(joint)} items, the dataset has {dataset.n_items}")
    recommender = LLMRecommender.create(dataset, config)
    if joint is not None:
        ids = recommender.add_special_tokens(list(SOFT_TOKENS))
        hidden = recommender.model.get_input_embeddings().embedding_dim
        recommender.feature_injector = ALLMRecHook(cf_model, torch.as_tensor(joint), *ids, hidden, config.max_history,
                                                   config.seed, cf_dropout)
    return recommender


def variant(soft_tokens: bool, finetune: str) -> str:
    """The name results go under: A-LLMRec, or one of the two prompt-only baselines."""
    if soft_tokens:
        return "A-LLMRec"
    return "LLM-only (zero-shot)" if finetune == "frozen" else f"LLM-only ({finetune}, TALLRec-like)"


@dataclass(frozen=True)
class Stage2Selection:
    """Stage 2 trained until validation Hit@1 stops rising: every ``every`` optimiser steps the model picks among
    the candidates of the valid split's first ``rows`` rows (the same seeded candidate sets each round), and the best
    round's projectors (or LoRA adapter) are kept; ``patience`` rounds without a gain above ``min_delta`` stop the
    training (0: train every step)."""

    every: int = 0  # optimiser steps between validation rounds (0: off, keep the last model)
    rows: int = 200
    patience: int = 0
    min_delta: float = 0.001
    split = "valid"  # not a field: a model is never selected on another split (the test)

    def check(self, dataset, trains: bool) -> None:
        """Raises ValueError on settings that cannot be honoured, before any training."""
        if self.every < 0:
            raise ValueError(f"--select-every must be 0 (off) or a number of optimiser steps, not {self.every}")
        if self.patience < 0 or self.min_delta < 0:
            raise ValueError(f"--select-patience ({self.patience}) and --select-min-delta ({self.min_delta}) "
                             "cannot be negative")
        if not self.every:
            if self.patience:
                raise ValueError("--select-patience needs --select-every N (validation rounds to count)")
            return
        if not trains:
            raise ValueError("--select-every judges a model that trains: the zero-shot baseline trains nothing")
        if self.rows < 1:
            raise ValueError(f"--select-rows must be at least 1, not {self.rows}")
        available = dataset.table(self.split).num_rows if self.split in dataset.examples else 0
        if available == 0:
            raise ValueError(f"--select-every judges on the {self.split} split, and this dataset has no "
                             f"{self.split} rows")
        if self.rows > available:
            raise ValueError(f"--select-rows {self.rows}: the {self.split} split has only {available} rows")


def train_stage2(recommender, dataset, sft, out: str | Path, words: PromptWords, n_candidates: int = 20,
                 epochs: int = 1, max_rows: int | None = None, resume: bool = False, progress: bool = True,
                 rows: str = "all", selection: Stage2Selection | None = None, log=print):
    """Trains on prompts with sampled candidates (fresh negatives per epoch: ``sft`` runs one pass over all
    epochs' prompts), saves the recommender and ``allmrec.json`` (written last: a folder without it holds an
    unfinished run) in ``out``; returns the SFT result and the number of prompts. The zero-shot baseline (no soft
    tokens, a frozen LLM) trains nothing: (None, 0).

    With ``selection.every`` the training runs in validation rounds (``llm.rounds``, recorded in
    ``out/selection.json``: step, Hit@1, kept, seconds trained) and ``out`` holds the best round's model."""
    from ..llm.rounds import Patience, Rounds, train_in_rounds
    from ..llm.train import sft_train

    out = Path(out)
    selection = selection or Stage2Selection()
    soft = recommender.embedding_hook is not None
    name = variant(soft, recommender.config.finetune)
    trains = name != "LLM-only (zero-shot)"
    selection.check(dataset, trains)
    record = {"soft_tokens": soft, "variant": name, "n_candidates": n_candidates, "train_rows": rows,
              "words": asdict(words)}
    result, examples = None, []
    if trains:
        examples = [e for epoch in range(epochs) for e in stage2_examples(
            recommender, dataset, words, soft, n_candidates, sft.seed + epoch, max_rows, rows)]
    if trains and selection.every:
        def judge() -> float:
            judged = evaluate_candidates(dataset, selection.split, "sampled", n_candidates, sft.seed, selection.rows,
                                         recommender, record, progress=progress)
            return judged["groups"]["all"]["Hit@1"]

        steps = math.ceil(len(examples) / sft.batch_size)
        rounds = Rounds.every(selection.every, steps, "step", 1, "Hit@1", timed=True,
                              label=f"{selection.split} Hit@1 ({selection.rows} rows)")
        result = train_in_rounds(recommender, examples, sft, out, rounds, judge,
                                 Patience(selection.patience, selection.min_delta), resume=resume, log=log,
                                 progress=progress)
        record["selection"] = {**asdict(selection), "split": selection.split, "seed": sft.seed}
    else:
        if trains:  # no examples: sft_train refuses
            result = sft_train(recommender.model, examples, sft, out / "train", resume=resume, progress=progress,
                               pad_id=recommender.pad_id, embedding_hook=recommender.embedding_hook)
        recommender.save_pretrained(out)
    (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return result, len(examples)


def load_stage2(directory: str | Path, dataset):
    """(recommender, record) of a stage-2 folder."""
    from ..llm.recommender import LLMRecommender

    directory = Path(directory)
    if not (directory / RECORD).exists():
        raise FileNotFoundError(f"{directory} is not an A-LLMRec stage-2 folder (no {RECORD})")
    return LLMRecommender.from_pretrained(directory, dataset), json.loads((directory / RECORD).read_text())


def candidate_hits(dataset, split: str = "test", protocol: str = "sampled", n_candidates: int = 20, seed: int = 0,
                   rows: int | None = None, recommender=None, record: dict | None = None,
                   cf_model: CFModel | None = None, lenient: bool = False, progress: bool = True):
    """Per row of the split (a DataFrame: ``row``, ``target``, ``hit``, ``lenient hit`` with ``lenient``, and one
    boolean column per ``item_groups`` group): whether a stage-2 recommender (``recommender`` + its ``record``)
    picks the target first among the row's candidates or, without one, whether ``cf_model`` ranks it first by its
    scores (ties pessimistic). Rows of two models are paired: the same rows and candidate sets (seeded)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from ..eval.metrics import ranks_from_scores

    sets = candidate_sets(dataset, split, protocol, n_candidates, seed, rows, cf_model)
    frame = dataset.split(split).iloc[:rows]
    hits, lenient_hits = np.zeros(len(frame), dtype=bool), np.zeros(len(frame), dtype=bool)
    words = PromptWords(**record["words"]) if record else None
    for row, (history, target, candidates) in enumerate(tqdm(list(zip(frame["history"], frame["target"], sets)),
                                                             desc="candidates", disable=not progress)):
        history, target = [int(i) for i in history], int(target)
        if recommender is not None:
            groups = pick(recommender, history, candidates, words, record["soft_tokens"])
            hits[row] = groups[:1] == [[target]]  # pessimistic: not a hit when its title is shared
            if lenient:
                lenient_hits[row] = lenient_hit(recommender, history, candidates, target, words,
                                                record["soft_tokens"])
        elif target in candidates:  # pessimistic: a candidate scoring as high as the target ranks first
            scores = cf_model.score([np.asarray(history, dtype=np.int64)])[0][candidates]
            hits[row] = ranks_from_scores(scores[None], np.array([candidates.index(target)]))[0] == 0
    table = pd.DataFrame({"row": np.arange(len(frame)), "target": frame["target"].to_numpy().astype(np.int64),
                          "hit": hits})
    if lenient and recommender is not None:
        table["lenient hit"] = lenient_hits
    for name, mask in item_groups(dataset, split, rows).items():
        if name != "all":
            table[name] = mask
    return table


def hit_summary(table, protocol: str, split: str, n_candidates: int, seed: int) -> dict:
    """Hit@1 with its 95% interval, overall and per group, of a ``candidate_hits`` table."""
    from ..eval.metrics import half_width_95

    result = {"protocol": protocol, "split": split, "n_candidates": n_candidates, "seed": seed, "groups": {}}
    everything = np.ones(len(table), dtype=bool)
    for name in ("all", *(c for c in table.columns if c not in ("row", "target", "hit", "lenient hit"))):
        mask = everything if name == "all" else table[name].to_numpy()
        values = table["hit"].to_numpy()[mask].astype(float)
        entry = {"rows": int(mask.sum()), "Hit@1": float(values.mean()) if len(values) else float("nan"),
                 "ci95": half_width_95(values)}
        if "lenient hit" in table:
            entry["Hit@1 lenient"] = float(table["lenient hit"][mask].mean()) if mask.any() else float("nan")
        result["groups"][name] = entry
    return result


def evaluate_candidates(dataset, split: str = "test", protocol: str = "sampled", n_candidates: int = 20,
                        seed: int = 0, rows: int | None = None, recommender=None, record: dict | None = None,
                        cf_model: CFModel | None = None, lenient: bool = False, progress: bool = True) -> dict:
    """Hit@1 among each row's candidates, overall and per group (``item_groups``): ``hit_summary`` of
    ``candidate_hits``."""
    table = candidate_hits(dataset, split, protocol, n_candidates, seed, rows, recommender, record, cf_model, lenient,
                           progress)
    return hit_summary(table, protocol, split, n_candidates, seed)
