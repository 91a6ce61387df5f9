"""TCA4Rec: token-level collaborative alignment (Lin et al., WWW 2026; shared/reference/tca4rec.md).

**Collaborative Tokenizer.** A frozen CF model scores every catalogue item for the user (s_i). At a label
position the identifier prefix so far is a trie node; its items' mass Z(node) = sum exp(s_i / beta) splits among
its children, q(v) = Z(child_v) / Z(node). This is the autoregressive factorisation of the CF item softmax over
the trie: the product of q along an identifier is the softmax mass of the items carrying it (items sharing an
identifier are separate mass under one leaf).

Vectorised: the item index sorts items so that every node is a range [lo, hi) of sorted positions, so one prefix
sum per user (float64, shifted by the user's max) gives every Z as a difference. A difference carries an
absolute rounding error of up to about n_items * eps * Z(root), so q is accurate only where Z(node) is not far
below Z(root). Rows whose node holds less than 4 n_items eps / Q_TOLERANCE of the user's mass (Z = 0 after
underflow included: CF logits spread over more than ~745 units) are redone from prefix sums over the node's own
items, shifted by the node's own max (``_local_log_q``): there the node's best item contributes exactly 1, so
Z(node) >= 1 and q is exact to rounding whatever the spread. Every q is thus within Q_TOLERANCE (1e-7) in
absolute terms, usually far closer; a child whose share is below that may come out as q = 0 (log q = -inf).

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
from dataclasses import dataclass, fields
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
    child_ptr: torch.Tensor  # CSR: the children of node n are child_ptr[n] .. child_ptr[n + 1] - 1
    node_token: torch.Tensor
    node_lo: torch.Tensor  # a node's items are the sorted positions [lo, hi)
    node_hi: torch.Tensor

    @classmethod
    def of(cls, index: ItemIndex, device: torch.device | str | None = None) -> TrieTensors:
        return cls(*(getattr(index, f.name).to(device) for f in fields(cls)))

    @property
    def n_items(self) -> int:
        return self.order.shape[0]


@dataclass
class SoftLabels:
    """q at each of N labels, over the children of the label's prefix node (padded to the widest node)."""

    tokens: torch.Tensor  # (N, C) child tokens in token order; 0 at padding
    log_q: torch.Tensor  # (N, C) float32; -inf at padding
    valid: torch.Tensor  # (N, C) bool
    target_child: torch.Tensor  # (N,) column of the gold token

    @property
    def q(self) -> torch.Tensor:
        return self.log_q.exp()

    @property
    def n_children(self) -> torch.Tensor:
        return self.valid.sum(1)


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
    node = trie.item_path[item, label_depth]
    first = trie.child_ptr[node]
    count = trie.child_ptr[node + 1] - first
    offset = torch.arange(max(int(count.max()), 1) if len(node) else 1, device=node.device)
    valid = offset < count.unsqueeze(1)
    child = torch.where(valid, first.unsqueeze(1) + offset, 0)  # padding points at the root: harmless, masked

    scores = cf_logits.double()[:, trie.order] / beta  # sorted order: every node is a contiguous range
    log_q = torch.full(child.shape, -math.inf, dtype=torch.float64, device=child.device)
    imprecise = torch.zeros(len(node), dtype=torch.bool, device=node.device)
    # A few labels sit at wide nodes (the root: every first token); padding every label to their width would
    # multiply the gathers, so narrow and wide labels are computed at their own widths.
    cum = F.pad(torch.exp(scores - scores.max(1, keepdim=True).values).cumsum(1), (1, 0))
    for rows in _width_groups(count):
        width = max(int(count[rows].max()), 1)
        log_q[rows, :width], imprecise[rows] = _global_log_q(cum, trie, label_example[rows], node[rows],
                                                             child[rows, :width])
    if bool(imprecise.any()):
        rows = imprecise.nonzero().squeeze(1)
        width = max(int(count[rows].max()), 1)
        log_q[rows, :width] = _local_log_q(scores, trie, label_example[rows], node[rows], child[rows, :width])
    return SoftLabels(tokens=torch.where(valid, trie.node_token[child], 0),
                      log_q=log_q.masked_fill(~valid, -math.inf).float(), valid=valid,
                      target_child=trie.item_path[item, label_depth + 1] - first)


def _width_groups(count: torch.Tensor, narrow: int = 64) -> list[torch.Tensor]:
    wide = count > narrow
    return [rows for rows in (torch.nonzero(~wide).squeeze(1), torch.nonzero(wide).squeeze(1)) if len(rows)]


def _global_log_q(cum: torch.Tensor, trie: TrieTensors, example: torch.Tensor, node: torch.Tensor,
                  child: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log q from one prefix sum per user (``cum[:, k]`` = mass of sorted positions < k), and the rows whose
    Z(node) is too small for it to be accurate."""
    rows = example.unsqueeze(1)
    z_node = cum[example, trie.node_hi[node]] - cum[example, trie.node_lo[node]]
    z_child = cum[rows, trie.node_hi[child]] - cum[rows, trie.node_lo[child]]
    # A cumsum's k-th entry is off by up to k * eps * (its value); both ends of a difference count, and so do the
    # numerator's and the denominator's errors: 4 n eps Z(root) / Z(node) bounds q's absolute error.
    imprecise = z_node * Q_TOLERANCE < 4 * trie.n_items * _EPS64 * cum[example, -1]
    return z_child.log() - z_node.log().unsqueeze(1), imprecise


def _local_log_q(scores: torch.Tensor, trie: TrieTensors, example: torch.Tensor, node: torch.Tensor,
                 child: torch.Tensor) -> torch.Tensor:
    """log q from prefix sums over each node's own items, shifted by the node's own max (rows padded to the
    largest node among them): the node's best item adds exactly 1, so Z(node) >= 1 whatever the spread."""
    lo = trie.node_lo[node]
    size = trie.node_hi[node] - lo
    offset = torch.arange(int(size.max()), device=node.device)
    inside = offset < size.unsqueeze(1)
    window = scores[example.unsqueeze(1), torch.where(inside, lo.unsqueeze(1) + offset, 0)]
    window = window.masked_fill(~inside, -math.inf)
    cum = F.pad(torch.exp(window - window.max(1, keepdim=True).values).cumsum(1), (1, 0))
    # padding children (the root) fall outside the window: clamped, and masked by the caller
    start = (trie.node_lo[child] - lo.unsqueeze(1)).clamp(0, len(offset))
    end = (trie.node_hi[child] - lo.unsqueeze(1)).clamp(0, len(offset))
    z_child = cum.gather(1, end) - cum.gather(1, start)
    return z_child.log() - cum.gather(1, size.unsqueeze(1)).log()


# ----- Soft Label Alignment -----------------------------------------------------------------------------------


def tca_loss(logits: torch.Tensor, label_tokens: torch.Tensor, labels: SoftLabels, config: TCAConfig) -> torch.Tensor:
    """Per-label losses (N,) from the LLM's logits at the label positions (N, V) and the labels' q."""
    tau = config.temperature
    child_logits = logits.gather(1, labels.tokens)
    if config.msl:
        masked = (child_logits / tau).masked_fill(~labels.valid, -math.inf)
        ce = F.cross_entropy(masked, labels.target_child, reduction="none")
    else:
        ce = F.cross_entropy(logits, label_tokens, reduction="none")
    # log p_v - log p_gold: whichever softmax p is, its normaliser cancels
    relative = (child_logits - logits.gather(1, label_tokens.unsqueeze(1))) / tau
    log_target = _log_soft_target(labels, config.alpha)
    if config.objective == "reference":
        # -log sum_v p_v y_v = -log p_gold - log sum_v y_v exp(relative_v)
        loss = ce - torch.logsumexp(log_target + relative, 1)
    else:
        # -sum_v y_v log p_v with log p_v = relative_v - ce (y's sum is one only up to q's rounding)
        target = log_target.exp()
        loss = ce * target.sum(1) - (target * relative).sum(1)
    if config.msl:
        # p = 1 on a lone child; y's rounding ((1 - alpha) + alpha * 1) would otherwise leave ~1e-8
        loss = torch.where(labels.n_children == 1, torch.zeros_like(loss), loss)
    return loss


def _log_soft_target(labels: SoftLabels, alpha: float) -> torch.Tensor:
    """log y over the children, y = (1 - alpha) onehot(gold) + alpha q, kept in log space so tiny q survive."""
    gold = F.one_hot(labels.target_child, labels.valid.shape[1]).bool()
    hard = torch.full_like(labels.log_q, _log(1.0 - alpha)).masked_fill(~gold, -math.inf)
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
        labels = self.soft_labels(batch)
        gold = labels.tokens.gather(1, labels.target_child.unsqueeze(1)).squeeze(1)
        if not torch.equal(gold, batch.label_tokens):
            raise ValueError("the batch's labels are not its target items' identifiers in this index")
        return tca_loss(logits, batch.label_tokens, labels, self.config)


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
