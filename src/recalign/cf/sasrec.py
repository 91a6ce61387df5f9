"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

Parameter names follow pmixer/SASRec.pytorch, the port that TCA4Rec and A-LLMRec build on, so their
checkpoints map onto this module key for key. As there, the residual of each attention block is added to
the *normalised* query, the feed-forward layers are 1x1 convolutions, item embeddings are scaled by sqrt(d),
padded positions are zeroed after every block, and the user vector is the last position's output.

Presets: ``tca4rec`` (hidden 64, 10 items, BCE with one negative at the last position, dropout 0.5, normal(0,
0.02) init) and ``allmrec`` (hidden 50, 50 items, 2 blocks, BCE at every position, dropout 0.5, xavier init)
reproduce the backbones of those papers; the default (full-softmax cross-entropy at every position, dropout
0.5) is stronger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import PAD, CFConfig, CFModel


@dataclass
class SASRecConfig(CFConfig):
    # 0.5 as RecBole and the SASRec paper: on sparse catalogues it beat 0.2 on validation rows (Toys: NDCG@10
    # .0227 vs .0204; docs/benchmarks/cf.md)
    dropout: float = 0.5
    n_blocks: int = 2
    n_heads: int = 1
    inner: int | None = None  # feed-forward width; None: the hidden size, as pmixer (RecBole uses 4x hidden)
    init: str = "normal"  # normal(0, 0.02) as TCA4Rec's copy, or xavier as pmixer / A-LLMRec


class PointWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, dropout: float, inner: int | None = None):
        super().__init__()
        self.conv1 = nn.Conv1d(hidden, inner or hidden, kernel_size=1)
        self.dropout1 = nn.Dropout(dropout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(inner or hidden, hidden, kernel_size=1)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dropout2(self.conv2(self.relu(self.dropout1(self.conv1(x.transpose(-1, -2))))))
        return y.transpose(-1, -2)


class SASRec(CFModel):
    model_type = "sasrec"
    config_class = SASRecConfig
    presets = {
        "tca4rec": dict(hidden=64, max_len=10, n_blocks=2, n_heads=1, dropout=0.5, loss="bce", positions="last",
                        init="normal", negatives_exclude_history=True),
        "allmrec": dict(hidden=50, max_len=50, n_blocks=2, n_heads=1, dropout=0.5, loss="bce", positions="all",
                        init="xavier", negatives_exclude_history=True),
    }

    def __init__(self, config: SASRecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.hidden
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.attention_layernorms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(config.n_blocks))
        self.attention_layers = nn.ModuleList(
            nn.MultiheadAttention(d, config.n_heads, dropout=config.dropout, batch_first=True)
            for _ in range(config.n_blocks))
        self.forward_layernorms = nn.ModuleList(nn.LayerNorm(d, eps=1e-8) for _ in range(config.n_blocks))
        self.forward_layers = nn.ModuleList(PointWiseFeedForward(d, config.dropout, config.inner)
                                            for _ in range(config.n_blocks))
        self.last_layernorm = nn.LayerNorm(d, eps=1e-8)
        self.register_buffer("causal_mask", torch.ones(config.max_len, config.max_len, dtype=torch.bool).triu(1),
                             persistent=False)
        self._initialise(config.init)

    def _initialise(self, init: str) -> None:
        if init == "xavier":
            for parameter in self.parameters():
                if parameter.dim() >= 2:
                    nn.init.xavier_normal_(parameter)
        elif init == "normal":
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, 0.0, 0.02)
        else:
            raise ValueError(f"init must be 'normal' or 'xavier', got {init!r}")

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        length = seq.shape[1]
        x = self.item_emb(seq) * math.sqrt(self.config.hidden)
        x = x + self.pos_emb.weight[:length]
        x = self.emb_dropout(x)
        keep = (seq != PAD).unsqueeze(-1)
        x = x * keep
        mask = self.causal_mask[:length, :length]
        for norm_att, attention, norm_ffn, ffn in zip(self.attention_layernorms, self.attention_layers,
                                                      self.forward_layernorms, self.forward_layers):
            query = norm_att(x)
            attended, _ = attention(query, x, x, attn_mask=mask, need_weights=False)
            x = norm_ffn(query + attended)
            x = (x + ffn(x)) * keep
        return self.last_layernorm(x)

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight[1:]
