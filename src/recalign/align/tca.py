"""TCA4Rec: token-level collaborative alignment (Lin et al., WWW 2026; shared/reference/tca4rec.md).

**Collaborative Tokenizer.** A frozen CF model scores every catalogue item for the user (s_i). At a label
position the identifier prefix so far is a trie node; its items' mass Z(node) = sum exp(s_i / beta) splits among
its children, q(v) = Z(child_v) / Z(node). This is the autoregressive factorisation of the CF item softmax over
the trie: the product of q along an identifier is the softmax mass of the items carrying it (items sharing an
identifier are separate mass under one leaf).

Vectorised: the item index sorts items so that every node is a range [lo, hi) of sorted positions, so one prefix
sum per user (float64, shifted by the user's max) gives every Z as a difference. A difference carries an
absolute rounding error of up to about n_items * eps * Z(root), so q is accurate only where Z(node) is not far
below Z(root). Labels whose node holds less than 4 n_items eps / Q_TOLERANCE of the user's mass (Z = 0 after
underflow included: CF logits spread over more than ~745 units) are redone from sums over the node's own items,
shifted by the node's own max (``_local_log_q``): there the node's best item contributes exactly 1, so
Z(node) >= 1 and q is exact to rounding whatever the spread. Every q is thus within Q_TOLERANCE (1e-7) in
absolute terms, usually far closer; a child whose share is below that may come out as q = 0 (log q = -inf).
Labels and their children are flattened into (label, child) pairs: the root's ~1,000 children and a deep node's
two cost what they hold, never the widest node's width times the number of labels.

**Soft Label Alignment.** y = (1 - alpha) onehot(gold) + alpha q, and p = softmax(z / tau) over the vocabulary
(tau = 1) or, with MSL, over the node's children (tau = ``TCAConfig.tau``). The reference's objective is
-log sum_v p_v y_v (not soft cross-entropy, which is offered as ``objective="soft_ce"``). Both are evaluated from
the cross-entropy of the gold token plus the children's logits relative to the gold one, since
log p_v - log p_gold = (z_v - z_gold) / tau needs no normaliser: nothing (N, V) beyond the cross-entropy itself,
and alpha = 0 leaves exactly ``F.cross_entropy`` (or the MSL cross-entropy).

``reference_soft_labels`` is the official per-label Python loop over a dict trie: the tests' oracle and the
benchmark's "before".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # annotations only: the LLM training module pulls in accelerate
    from ..cf.base import CFModel
    from ..index.trie import ItemIndex
    from ..llm.train import LabelBatch

OBJECTIVES = ("reference", "soft_ce")
Q_TOLERANCE = 1e-7  # absolute error on q a row may carry before it is recomputed from its node's own items
_EPS64 = torch.finfo(torch.float64).eps


@dataclass
class TCAConfig:
    alpha: float = 0.1  # weight of the CF distribution in the soft label; 0 = the plain baseline
    beta: float = 1.0  # temperature of the CF item softmax (hard-coded 1 in the reference)
    tau: float = 4.5  # LLM softmax temperature, used only with MSL (the reference forces 1 otherwise)
    msl: bool = False  # masked softmax loss: normalise the LLM over the node's valid children only
    objective: str = "reference"  # "reference": -log sum p y (the official code); "soft_ce": -sum y log p
    faithful_mask: bool = False  # train only the tokens the reference trains (see faithful_label_mask)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.beta <= 0 or self.tau <= 0:
            raise ValueError(f"beta and tau must be positive, got {self.beta} and {self.tau}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: expected one of {OBJECTIVES}")

    @property
    def temperature(self) -> float:
        return self.tau if self.msl else 1.0

    def label_mask(self, target_ids: Sequence[int]) -> list[bool]:
        """Which of an example's target tokens (identifier + EOS) are trained: ``SFTExample.label_mask``."""
        return faithful_label_mask(target_ids) if self.faithful_mask else [True] * len(target_ids)


def faithful_label_mask(target_ids: Sequence[int]) -> list[bool]:
    """The target tokens the reference trains, for ``target_ids`` = the L identifier tokens then EOS.

    The reference's sequence ends with the title (no EOS) and its last column's label is dropped (§3.1, §9.2):
    it trains depths 0..L-2, i.e. every identifier token but the last, never EOS. A one-token identifier trains
    nothing.
    """
    length = len(target_ids) - 1  # identifier tokens, EOS excluded
    return [depth < length - 1 for depth in range(len(target_ids))]


# ----- Collaborative Tokenizer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrieTensors:
    """The item index arrays the soft labels read, on one device."""

    order: torch.Tensor  # sorted position -> item id
    item_path: torch.Tensor  # (n_items, max_depth + 1) item id -> node after d tokens
    item_length: torch.Tensor  # identifier tokens, EOS included
    child_range: torch.Tensor  # (n_nodes, 2): node n's children are the node ids [first, end), consecutive (BFS)
    node_token: torch.Tensor
    node_range: torch.Tensor  # (n_nodes, 2): a node's items are the sorted positions [lo, hi)
    sorted_path: torch.Tensor  # item_path in sorted order: sorted position -> node after d tokens

    @classmethod
    def of(cls, index: ItemIndex, device: torch.device | str | None = None) -> TrieTensors:
        order, item_path = index.order.to(device), index.item_path.to(device)
        return cls(order=order, item_path=item_path, item_length=index.item_length.to(device),
                   child_range=torch.stack([index.child_ptr[:-1], index.child_ptr[1:]], 1).to(device),
                   node_token=index.node_token.to(device),
                   node_range=torch.stack([index.node_lo, index.node_hi], 1).to(device),
                   sorted_path=item_path[order].contiguous())

    @property
    def n_items(self) -> int:
        return self.order.shape[0]


@dataclass
class SoftLabels:
    """q at each of N labels over the children of the label's prefix node, flattened into P (label, child) pairs:
    a label's pairs are consecutive, its children in token order."""

    pair_label: torch.Tensor  # (P,) the label a pair belongs to
    tokens: torch.Tensor  # (P,) the child's token
    log_q: torch.Tensor  # (P,) float32 (-inf where q underflows)
    gold_pair: torch.Tensor  # (N,) the pair of the label's own (gold) token

    @property
    def q(self) -> torch.Tensor:
        return self.log_q.exp()

    @property
    def n_labels(self) -> int:
        return self.gold_pair.shape[0]

    @property
    def n_children(self) -> torch.Tensor:
        return torch.bincount(self.pair_label, minlength=self.n_labels)

    @property
    def gold_tokens(self) -> torch.Tensor:
        return self.tokens[self.gold_pair]

    def per_label_sum(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) sums of a (P,) quantity over each label's pairs."""
        return values.new_zeros(self.n_labels).index_add(0, self.pair_label, values)


def soft_labels(cf_logits: torch.Tensor, index: ItemIndex | TrieTensors, label_example: torch.Tensor,
                label_depth: torch.Tensor, targets: torch.Tensor, beta: float = 1.0) -> SoftLabels:
    """q for each label: the ``label_depth``-th token of item ``targets[label_example]``'s identifier (EOS incl.).

    ``cf_logits`` (B, n_items) score the catalogue for each example; everything runs on its device.
    """
    trie = index if isinstance(index, TrieTensors) else TrieTensors.of(index, cf_logits.device)
    if cf_logits.shape[1] != trie.n_items:
        raise ValueError(f"CF logits cover {cf_logits.shape[1]} items, the index {trie.n_items}")
    item = targets[label_example]
    if bool((label_depth >= trie.item_length[item]).any()):
        raise ValueError("a label lies beyond its target's identifier (EOS included)")
    path = item * trie.item_path.shape[1] + label_depth  # flat positions: one gather beats 2-d indexing here
    node = trie.item_path.view(-1)[path]
    first, end = trie.child_range[node].unbind(1)
    count = end - first
    pair_label = torch.repeat_interleave(count)  # label n repeated once per child
    start = count.cumsum(0) - count  # each label's first pair
    pair_of_child = start - first  # pair_of_child[label] + child node id = the child's pair
    child = torch.arange(len(pair_label), device=node.device) - pair_of_child[pair_label]

    # sorted order, where every node is a range; gathered in float32 (index_select is ~10x slower on float64)
    scores = cf_logits.float().index_select(1, trie.order).double()
    if beta != 1.0:
        scores /= beta
    log_q, imprecise = _global_log_q(scores, trie, label_example, node, pair_label, child)
    if bool(imprecise.any()):
        local = _local_log_q(scores, trie, label_example, label_depth, node, imprecise, pair_of_child, pair_label)
        log_q = torch.where(imprecise[pair_label], local, log_q)
    return SoftLabels(pair_label=pair_label, tokens=trie.node_token[child], log_q=log_q.float(),
                      gold_pair=pair_of_child + trie.item_path.view(-1)[path + 1])


def _global_log_q(scores: torch.Tensor, trie: TrieTensors, example: torch.Tensor, node: torch.Tensor,
                  pair_label: torch.Tensor, child: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log q per pair from one prefix sum per user, shifted by the user's max, and the labels whose Z(node) is
    too small for it to be accurate."""
    n = trie.n_items
    cum = scores.new_empty(scores.shape[0], n + 1)  # cum[:, k] = mass of sorted positions < k
    cum[:, 0] = 0
    torch.exp(scores - scores.max(1, keepdim=True).values, out=cum[:, 1:])
    flat = cum.cumsum_(1).view(-1)
    base = example * (n + 1)
    ends = flat[base.unsqueeze(1) + trie.node_range[node]]
    z_node = ends[:, 1] - ends[:, 0]
    ends = flat[base[pair_label].unsqueeze(1) + trie.node_range[child]]
    z_child = ends[:, 1] - ends[:, 0]
    # A cumsum's k-th entry is off by up to k * eps * (its value); both ends of a difference count, and so do the
    # numerator's and the denominator's errors: 4 n eps Z(root) / Z(node) bounds q's absolute error.
    imprecise = z_node * Q_TOLERANCE < 4 * n * _EPS64 * flat[base + n]
    return (z_child / z_node[pair_label]).log(), imprecise


def _local_log_q(scores: torch.Tensor, trie: TrieTensors, example: torch.Tensor, depth: torch.Tensor,
                 node: torch.Tensor, imprecise: torch.Tensor, pair_of_child: torch.Tensor,
                 pair_label: torch.Tensor) -> torch.Tensor:
    """log q per pair (meaningful at the ``imprecise`` labels' pairs) from sums over each node's own items,
    shifted by the node's own max: the node's best item adds exactly 1, so Z(node) >= 1 whatever the spread.
    ``pair_of_child[label] + child node id`` is the pair of a label's child."""
    labels = imprecise.nonzero().squeeze(1)
    lo, hi = trie.node_range[node[labels]].unbind(1)
    size = hi - lo
    segment = torch.repeat_interleave(torch.arange(len(labels), device=node.device), size)  # one per item
    owner = labels[segment]
    position = lo[segment] + torch.arange(len(segment), device=node.device) - (size.cumsum(0) - size)[segment]
    values = scores.view(-1)[example[owner] * trie.n_items + position]
    top = values.new_full((len(labels),), -math.inf).scatter_reduce(0, segment, values, "amax")
    weight = torch.exp(values - top[segment])
    child = trie.sorted_path.view(-1)[position * trie.sorted_path.shape[1] + depth[owner] + 1]
    z_child = weight.new_zeros(len(pair_label)).index_add_(0, pair_of_child[owner] + child, weight)
    z_node = weight.new_zeros(len(imprecise)).index_add_(0, owner, weight)
    return (z_child / z_node[pair_label]).log()


# ----- Soft Label Alignment -----------------------------------------------------------------------------------


def tca_loss(logits: torch.Tensor, label_tokens: torch.Tensor, labels: SoftLabels, config: TCAConfig) -> torch.Tensor:
    """Per-label losses (N,) from the LLM's logits at the label positions (N, V) and the labels' q."""
    tau = config.temperature
    gold_logit = logits.gather(1, label_tokens.unsqueeze(1)).squeeze(1)
    # log p_v - log p_gold at each child: whichever softmax p is, its normaliser cancels
    relative = (logits[labels.pair_label, labels.tokens] - gold_logit[labels.pair_label]) / tau
    if config.msl:  # the masked softmax's cross-entropy: log sum over the children of exp(relative)
        ce = _per_label_logsumexp(relative, labels)
    else:
        ce = F.cross_entropy(logits, label_tokens, reduction="none")
    if config.alpha == 0:  # y is the one-hot label: the plain (or MSL) loss, gradients included, bit for bit
        return ce
    log_target = _log_soft_target(labels, config.alpha)
    if config.objective == "reference":
        # -log sum_v p_v y_v = -log p_gold - log sum_v y_v exp(relative_v)
        loss = ce - _per_label_logsumexp(log_target + relative, labels)
    else:
        # -sum_v y_v log p_v with log p_v = relative_v - ce (y's sum is one only up to q's rounding)
        target = log_target.exp()
        loss = ce * labels.per_label_sum(target) - labels.per_label_sum(target * relative)
    if config.msl:
        # p = 1 on a lone child; y's rounding ((1 - alpha) + alpha * 1) would otherwise leave ~1e-8
        loss = torch.where(labels.n_children == 1, torch.zeros_like(loss), loss)
    return loss


def _per_label_logsumexp(values: torch.Tensor, labels: SoftLabels) -> torch.Tensor:
    """(N,) log sum exp of a (P,) quantity over each label's pairs; every label has a finite value (its gold
    pair's), so the shift by the label's max is finite. The shift is a constant to autograd: the gradient is the
    softmax over the label's pairs, as it should be."""
    top = values.detach().new_full((labels.n_labels,), -math.inf).scatter_reduce(0, labels.pair_label,
                                                                                   values.detach(), "amax")
    return labels.per_label_sum(torch.exp(values - top[labels.pair_label])).log() + top


def _log_soft_target(labels: SoftLabels, alpha: float) -> torch.Tensor:
    """log y per pair, y = (1 - alpha) onehot(gold) + alpha q, kept in log space so tiny q survive."""
    hard = torch.full_like(labels.log_q, -math.inf)
    hard[labels.gold_pair] = _log(1.0 - alpha)
    return torch.logaddexp(hard, _log(alpha) + labels.log_q)


def _log(x: float) -> float:
    return math.log(x) if x > 0 else -math.inf


class TCALoss:
    """The SFT loop's loss hook (``recalign.llm.train.LossHook``) for TCA4Rec.

    ``cf_model`` is any recalign CF model over the index's catalogue (item ids alike); it is frozen and kept in
    eval mode. Each call scores the batch's histories, computes q at its labels and returns per-label losses.
    The CF scores stay float32 (the reference casts them to bf16 first).
    """

    def __init__(self, cf_model: CFModel | None, index: ItemIndex, config: TCAConfig | None = None):
        self.config = config or TCAConfig()
        if cf_model is None and self.config.alpha > 0:
            raise ValueError("a CF model is needed when alpha > 0 (without one, only alpha = 0: plain or MSL)")
        if cf_model is not None and cf_model.n_items != index.n_items:
            raise ValueError(f"the CF model scores {cf_model.n_items} items, the index holds {index.n_items}")
        self.cf_model = cf_model.eval().requires_grad_(False) if cf_model is not None else None
        self.index = index
        self._tries: dict[torch.device, TrieTensors] = {}

    @classmethod
    def for_config(cls, cf_model: CFModel | None, index: ItemIndex, config: TCAConfig) -> TCALoss | None:
        """The hook ``config`` calls for: None when its loss is plain cross-entropy (alpha 0 without MSL; the
        faithful mask acts through the examples' label masks), and the CF model only when alpha > 0."""
        if config.alpha == 0 and not config.msl:
            return None
        return cls(cf_model if config.alpha > 0 else None, index, config)

    @torch.no_grad()
    def cf_logits(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, n_items) float32 CF scores of the histories (dataset item ids); flat without a CF model (alpha = 0,
        where only the trie's children matter: the masked softmax)."""
        if self.cf_model is None:
            return torch.zeros(len(histories), self.index.n_items)
        self.cf_model.eval()  # dropout must stay off even if someone switched the model back to training
        device = next(self.cf_model.parameters()).device
        return self.cf_model.logits(self.cf_model.pad(histories).to(device)).float()

    def soft_labels(self, batch: LabelBatch) -> SoftLabels:
        scores = self.cf_logits(batch.histories).to(batch.items.device)
        if scores.device not in self._tries:
            self._tries[scores.device] = TrieTensors.of(self.index, scores.device)
        return soft_labels(scores, self._tries[scores.device], batch.label_example, batch.label_depth,
                           batch.items, self.config.beta)

    def __call__(self, logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
        """Per-label losses. Rows without a target item (``item`` -1: a semantic-ID recommender's auxiliary tasks,
        whose targets are not identifiers of the index) get plain cross-entropy."""
        aligned = batch.items[batch.label_example] >= 0
        if bool(aligned.all()):
            return self._aligned_loss(logits, batch)
        loss = F.cross_entropy(logits, batch.label_tokens, reduction="none")
        if bool(aligned.any()):
            loss = loss.clone()
            loss[aligned] = self._aligned_loss(logits[aligned], _rows_with_items(batch, aligned))
        return loss

    def _aligned_loss(self, logits: torch.Tensor, batch: LabelBatch) -> torch.Tensor:
        labels = self.soft_labels(batch)
        if not torch.equal(labels.gold_tokens, batch.label_tokens):
            raise ValueError("the batch's labels are not its target items' identifiers in this index")
        return tca_loss(logits, batch.label_tokens, labels, self.config)


def _rows_with_items(batch: LabelBatch, aligned: torch.Tensor) -> LabelBatch:
    """The labels of ``aligned`` and their targets alone, targets renumbered (what the soft labels read)."""
    rows = torch.unique(batch.label_example[aligned])
    renumber = torch.full((len(batch.items),), -1, dtype=torch.long, device=rows.device)
    renumber[rows] = torch.arange(len(rows), device=rows.device)
    example = renumber[batch.label_example[aligned]]
    return replace(batch, label_rows=batch.label_rows[aligned], label_cols=batch.label_cols[aligned],
                   label_tokens=batch.label_tokens[aligned], label_depth=batch.label_depth[aligned],
                   label_example=example, items=batch.items[rows],
                   histories=[batch.histories[int(r)] for r in rows.tolist()])


# ----- the reference's slow path ------------------------------------------------------------------------------


@dataclass
class ReferenceTrie:
    """The reference's trie: every prefix (a tuple of tokens) -> {next token: [item ids under it]}."""

    prefixes: dict[tuple[int, ...], dict[int, list[int]]]
    identifiers: list[list[int]]  # item id -> identifier tokens, EOS included

    @classmethod
    def from_index(cls, index: ItemIndex) -> ReferenceTrie:
        identifiers = index.item_tokens.tolist()
        identifiers = [tokens[:length] for tokens, length in zip(identifiers, index.item_length.tolist())]
        prefixes: dict[tuple[int, ...], dict[int, list[int]]] = {}
        for item, tokens in enumerate(identifiers):
            for depth, token in enumerate(tokens):
                prefixes.setdefault(tuple(tokens[:depth]), {}).setdefault(token, []).append(item)
        return cls(prefixes, identifiers)


def reference_soft_labels(cf_logits: torch.Tensor, trie: ReferenceTrie, label_example: torch.Tensor,
                          label_depth: torch.Tensor, targets: torch.Tensor, beta: float = 1.0,
                          vocab_size: int | None = None) -> list[dict[int, float]]:
    """q per label as {token: probability}, the way the official code computes it (§2.3, §8.1), minus its GPU
    syncs: per label, the prefix is rebuilt and looked up, the node's (token, item) pairs become tensors, the
    items' CF logits are softmaxed (float64 here) and summed by next token. With ``vocab_size`` the sum is a
    scatter into a dense vocabulary-long vector, as the official code does; without, into one slot per child."""
    examples, depths, target_list = label_example.tolist(), label_depth.tolist(), targets.tolist()
    out = []
    for example, depth in zip(examples, depths):
        tokens = trie.identifiers[target_list[example]]
        node = trie.prefixes[tuple(tokens[:depth])]
        pair_tokens = torch.tensor([token for token, items in node.items() for _ in items])
        pair_items = torch.tensor([item for items in node.values() for item in items])
        weights = torch.softmax(cf_logits[example, pair_items].double() / beta, 0)
        if vocab_size is None:
            slots = torch.repeat_interleave(torch.arange(len(node)), torch.tensor([len(v) for v in node.values()]))
            q = torch.zeros(len(node), dtype=torch.float64).index_add_(0, slots, weights)
        else:
            q = torch.zeros(vocab_size, dtype=torch.float64).index_add_(0, pair_tokens, weights)[list(node)]
        out.append(dict(zip(node, q.tolist())))
    return out
