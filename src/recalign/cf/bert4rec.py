"""BERT4Rec (Sun et al., 2019): a bidirectional transformer encoder trained with the cloze objective.

The architecture follows the authors' code (FeiSun/BERT4Rec, built on Google's BERT): item and learned
position embeddings are summed, layer-normalised and dropped out; each block is *post-LN* (``x = LN(x +
Drop(Attn(x)))``, then ``x = LN(x + Drop(FFN(x)))``, a GELU feed-forward of width 4 * hidden); the output head
transforms a state by Linear + GELU + LayerNorm and scores it against the item embedding table (shared with
the input) plus a bias per item. Weights start from a normal(0, 0.02) truncated at two standard deviations.

Item ids are shifted by one as everywhere in ``recalign.cf``; the extra id ``n_items + 1`` is [MASK]. Padding
never takes part in attention (a key padding mask); a row that is all padding attends to its padding instead,
so it gives finite (meaningless) states rather than NaN. Positions are counted from the right, so the most
recent position always has the same embedding whatever the amount of left padding.

Training (``loss``): the last ``max_len`` items of each row (history and target) are masked independently
with probability ``mask_prob``; with probability ``last_mask_prob`` a row instead has only its last item
masked, the setting the model meets at inference (the authors' data generator adds one such instance per
ten random maskings, hence the default 0.1). Each row gets at least one masked item, and cross-entropy over
the whole catalogue is taken at the masked positions only. ``positions="last"`` masks only the last item
of every row. Inference (``user_vectors`` / ``logits``) appends [MASK] to the history (dropping its oldest
item if it already holds ``max_len``) and reads the output at that position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import PAD, CFConfig, CFModel


@dataclass
class BERT4RecConfig(CFConfig):
    loss: str = "cloze"
    n_blocks: int = 2
    n_heads: int = 2
    mask_prob: float = 0.2  # each item of a row is replaced by [MASK] with this probability
    last_mask_prob: float = 0.1  # ... or, with this probability, only the row's last item is

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss != "cloze":
            raise ValueError(f"BERT4Rec sees the whole sequence at once and trains with loss='cloze', not "
                             f"{self.loss!r}")
        if not (0 <= self.mask_prob <= 1 and 0 <= self.last_mask_prob <= 1):
            raise ValueError("mask_prob and last_mask_prob must lie in [0, 1]")


class TransformerBlock(nn.Module):
    """Post-LN encoder block: bidirectional self-attention, then a GELU feed-forward."""

    def __init__(self, hidden: int, n_heads: int, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, n_heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden),
                                          nn.Dropout(dropout))
        self.feed_forward_norm = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, key_padding_mask=padding, need_weights=False)
        x = self.attention_norm(x + self.attention_dropout(attended))
        return self.feed_forward_norm(x + self.feed_forward(x))


class BERT4Rec(CFModel):
    model_type = "bert4rec"
    config_class = BERT4RecConfig

    def __init__(self, config: BERT4RecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.hidden
        self.mask_id = n_items + 1
        self.item_emb = nn.Embedding(n_items + 2, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_norm = nn.LayerNorm(d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(d, config.n_heads, config.dropout)
                                    for _ in range(config.n_blocks))
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, 0.0, 0.02, -0.04, 0.04)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.blocks:  # the attention's input projection is a bare parameter, not an nn.Linear
            nn.init.trunc_normal_(block.attention.in_proj_weight, 0.0, 0.02, -0.04, 0.04)
            nn.init.zeros_(block.attention.in_proj_bias)
        with torch.no_grad():
            self.item_emb.weight[PAD].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) left-padded ids (items, [MASK], padding), L <= max_len -> (B, L, hidden), every state having
        seen the whole row."""
        length = seq.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequences of {length} ids exceed max_len {self.config.max_len}")
        x = self.item_emb(seq) + self.pos_emb.weight[self.config.max_len - length:]
        x = self.emb_dropout(self.emb_norm(x))
        padding = seq == PAD
        padding = padding & ~padding.all(dim=1, keepdim=True)  # an all-padding row attends to all: no NaN
        for block in self.blocks:
            x = block(x, padding)
        return x

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        mask = torch.full((seq.shape[0], 1), self.mask_id, dtype=seq.dtype, device=seq.device)
        seq = torch.cat([seq, mask], dim=1)[:, -self.config.max_len:]
        return self.head(self.encode(seq)[:, -1])

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight[1:self.n_items + 1]

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(seq) @ self.item_vectors().T + self.output_bias

    def cloze_mask(self, seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, L) bool: the positions of left-padded ``seq`` to hide, only real items and one at least per row
        that has any (the row's last item when only that is to be hidden)."""
        real = seq != PAD
        draws = torch.rand(seq.shape, generator=generator, device=generator.device).to(seq.device)
        last_only = torch.rand(seq.shape[0], generator=generator, device=generator.device).to(seq.device)
        last_only = last_only < self.config.last_mask_prob
        if self.config.positions == "last":
            last_only = torch.ones_like(last_only)
        masked = (draws < self.config.mask_prob) & real & ~last_only.unsqueeze(1)
        masked[:, -1] |= last_only & real[:, -1]
        # rows left with nothing hidden hide their real item with the smallest draw (uniform among them)
        empty = ~masked.any(dim=1) & real.any(dim=1)
        fallback = draws.masked_fill(~real, 2.0).argmin(dim=1)
        masked[empty, fallback[empty]] = True
        return masked

    def loss(self, seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Cloze loss on (B, max_len + 1) rows of history then target, of which the last max_len ids are used."""
        seq = seq[:, -self.config.max_len:]
        masked = self.cloze_mask(seq, generator)
        states = self.encode(seq.masked_fill(masked, self.mask_id))[masked]
        if states.shape[0] == 0:  # only all-padding rows
            return self.output_bias.sum() * 0.0
        scores = self.head(states) @ self.item_vectors().T + self.output_bias
        return F.cross_entropy(scores, seq[masked] - 1)
