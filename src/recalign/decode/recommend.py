"""Recommendations and evaluation of an LLM recommender through constrained beam search.

Ranks are item-level and pessimistic, like every other ranking in recalign: when several items share the
generated identifier (the same title), the target ranks last among them. The reference TCA4Rec code instead
counts any item with the target's title as a hit; that lenient "identifier" match is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..data import Dataset
from ..eval.metrics import DEFAULT_KS, confidence_95, coverage, ranking_metrics
from ..eval.protocols import split_histories
from ..llm.recommender import LLMRecommender
from ..llm.train import LabelPositionLM, SFTExample, collate, launch_state
from .beam import BeamConfig, Ranked, beam_search


@dataclass
class Recommendation:
    item: int
    raw_id: str
    title: str
    score: float


def recommend(recommender: LLMRecommender, histories: Sequence[Sequence[int]], k: int | None = 10,
              config: BeamConfig | None = None) -> list[list[Recommendation]]:
    """The top-``k`` catalogue items for each history (``num_beams`` at least ``k``); ``k=None``: every item of
    every generated identifier, best first."""
    config = config or BeamConfig(num_beams=k or 10)
    if k is not None and config.num_beams < k:
        raise ValueError(f"num_beams ({config.num_beams}) must be at least k ({k})")
    unknown = sorted({int(i) for h in histories for i in h if not 0 <= int(i) < len(recommender.titles)})
    if unknown:
        raise ValueError(f"item ids outside the catalogue (0..{len(recommender.titles) - 1}): {unknown[:10]}")
    ranked = beam_search(recommender.model, [recommender.prompt(h) for h in histories], recommender.index, config,
                         recommender.pad_id, recommender.embedding_hook, histories)
    out = []
    for result in ranked:
        rows = [Recommendation(item, recommender.raw_ids[item], recommender.titles[item], score)
                for leaf, score in zip(result.leaves, result.scores)
                for item in recommender.index.leaf_items(leaf).tolist()]
        out.append(rows[:k])
    return out


def identifier_log_likelihood(recommender: LLMRecommender, histories: Sequence[Sequence[int]],
                              items: Sequence[int], batch_size: int = 8) -> np.ndarray:
    """log p(item's identifier tokens, EOS included | the history's prompt) per row, by teacher forcing: the score
    a beam search without length penalty gives that identifier, for any item, generated or not (a finer signal
    than ranks when few targets are hit)."""
    import torch

    lm = LabelPositionLM(recommender.model, recommender.embedding_hook).eval()
    device = next(recommender.model.parameters()).device
    out = np.empty(len(items))
    for start in range(0, len(items), batch_size):
        rows = range(start, min(start + batch_size, len(items)))
        batch = collate([SFTExample(recommender.prompt(histories[r]), recommender.index.tokens(int(items[r])),
                                    history=tuple(int(i) for i in histories[r])) for r in rows],
                        recommender.pad_id).to(device)
        with torch.no_grad():
            logits = lm(batch.input_ids, batch.attention_mask, batch.position_ids, batch.label_rows,
                        batch.label_cols, batch.row_histories)
        token_logp = torch.log_softmax(logits, -1).gather(1, batch.label_tokens.unsqueeze(1)).squeeze(1)
        sums = torch.zeros(len(rows), dtype=torch.float64).index_add_(0, batch.label_example.cpu(),
                                                                     token_logp.double().cpu())
        out[start:start + len(rows)] = sums.numpy()
    return out


def target_ranks(results: list[Ranked], targets: np.ndarray, recommender: LLMRecommender) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """(item ranks, identifier ranks) of each target, 0-based, inf when its identifier was not generated.

    Item rank: items of earlier leaves, plus all the other items sharing the target's leaf (pessimistic).
    Identifier rank: the position of the target's leaf among the generated identifiers (the reference's match).
    """
    index = recommender.index
    item_ranks = np.full(len(targets), np.inf)
    leaf_ranks = np.full(len(targets), np.inf)
    sizes = (index.node_hi - index.node_lo).numpy()
    for row, (result, target) in enumerate(zip(results, targets)):
        leaf = int(index.item_leaf[target])
        if leaf in result.leaves:
            position = result.leaves.index(leaf)
            leaf_ranks[row] = position
            item_ranks[row] = sizes[result.leaves[:position + 1]].sum() - 1
    return item_ranks, leaf_ranks


@dataclass
class LLMEvaluation:
    metrics: dict[str, float]
    ci95: dict[str, float]
    identifier_metrics: dict[str, float]  # any item sharing the target's identifier counts (reference behaviour)
    n_examples: int
    users_per_second: float
    item_ranks: np.ndarray
    results: list[Ranked]
    # share of the catalogue in anyone's top K, and the distinct top-1 items: near-constant rankings (a model that
    # learned popularity, not the user) show here long before they show in hit rates
    diversity: dict[str, float]


def evaluate_llm(recommender: LLMRecommender, dataset: Dataset, split: str = "test", ks=DEFAULT_KS,
                 config: BeamConfig | None = None, max_rows: int | None = None,
                 progress: bool = True) -> LLMEvaluation:
    """HR/NDCG/MRR@K of the constrained beam search's ranked items on a split's first ``max_rows`` rows.

    Under ``accelerate launch`` every process must call it: the rows are shared out and gathered back."""
    config = config or BeamConfig(num_beams=max(ks))
    if config.num_beams < max(ks):
        raise ValueError(f"num_beams ({config.num_beams}) must be at least the largest K ({max(ks)})")
    histories = split_histories(*dataset.histories(split))
    targets = dataset.table(split).column("target").to_numpy().astype(np.int64)
    if max_rows is not None:
        histories, targets = histories[:max_rows], targets[:max_rows]
    # Under `accelerate launch` each process decodes a contiguous run of whole batches, the very batches one
    # process would form, and the results are gathered in row order: the metrics are exactly one process's.
    state = launch_state()
    starts = np.array_split(np.arange(0, len(histories), config.batch_size), state.num_processes)[state.process_index]
    results: list[Ranked] = []
    started = time.perf_counter()
    mine = sum(len(histories[start:start + config.batch_size]) for start in starts.tolist())
    bar = tqdm(total=mine, desc=f"decoding {split}" + (f" (process 0 of {state.num_processes})"
                                                       if state.num_processes > 1 else ""),
               unit="user", disable=not progress or not state.is_main_process)
    for start in starts.tolist():
        batch = histories[start:start + config.batch_size]
        results += beam_search(recommender.model, [recommender.prompt(h) for h in batch], recommender.index, config,
                               recommender.pad_id, recommender.embedding_hook, batch)
        bar.update(len(batch))
    bar.close()
    if state.num_processes > 1:
        results = gather_object(results)
    seconds = time.perf_counter() - started
    item_ranks, leaf_ranks = target_ranks(results, targets, recommender)
    return LLMEvaluation(metrics=ranking_metrics(item_ranks, ks), ci95=confidence_95(item_ranks, ks),
                         identifier_metrics=ranking_metrics(leaf_ranks, ks), n_examples=len(targets),
                         users_per_second=len(targets) / seconds if seconds > 0 else float("inf"),
                         item_ranks=item_ranks, results=results, diversity=diversity(results, recommender, ks))


def diversity(results: list[Ranked], recommender: LLMRecommender, ks) -> dict[str, float]:
    widest = max(ks)
    top = np.full((len(results), widest), -1)
    for row, result in enumerate(results):
        items = result.items(recommender.index, widest)
        top[row, :len(items)] = items
    n_items = len(recommender.raw_ids)
    return {**{f"coverage@{k}": coverage(top, n_items, k) for k in ks},
            "distinct_top1": int(len(np.unique(top[:, 0][top[:, 0] >= 0])))}
