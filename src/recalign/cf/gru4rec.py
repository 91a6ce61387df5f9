"""GRU4Rec (Hidasi et al., 2016), in the form RecBole and most sequential-recommendation benchmarks use.

Item embedding (hidden wide, row 0 the padding) -> dropout -> GRU (``n_layers``) -> a dense layer back to
``hidden``; the state at each position scores every item by a dot product with the item embeddings, and the
model trains with full-softmax cross-entropy at every position (``CFModel.next_item_loss``).

Padding: histories come left-padded, but a GRU that stepped through the leading padding would start each real
sequence from a hidden state that depends on how much padding precedes it. Each row is therefore rotated so
its items come first, run as a packed sequence (the recurrence starts from zero at the first real item and
never sees padding), and rotated back. States thus depend on the items alone, never on the padded length, as
in the original session-parallel GRU4Rec where each session starts from a zero hidden state. Padded positions
get a zero GRU output, so the dense layer maps them (and an empty history) to its bias: the one position
before the first item learns to predict first items from nothing, as in the other models.

Initialisation as in RecBole: embedding xavier normal, GRU weights xavier uniform, the dense layer torch's
default; the padding row is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .base import PAD, CFConfig, CFModel


@dataclass
class GRU4RecConfig(CFConfig):
    n_layers: int = 1


class GRU4Rec(CFModel):
    model_type = "gru4rec"
    config_class = GRU4RecConfig

    def __init__(self, config: GRU4RecConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.hidden
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=PAD)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(d, d, num_layers=config.n_layers, batch_first=True, bias=False,
                          dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.dense = nn.Linear(d, d)
        self._initialise()

    def _initialise(self) -> None:
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()
        for name, parameter in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(parameter)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        batch, length = seq.shape
        keep = seq != PAD
        positions = torch.arange(length, device=seq.device)
        # everything after the leading padding counts (a padding id further on would be a zero input), so
        # that a row's rotation depends on its first item's position alone and states stay causal
        lengths = length - (keep.cumsum(1) == 0).sum(1)
        # rotate each row left by its padding so the items start at position 0 ...
        to_front = (positions + (length - lengths).unsqueeze(1)) % length
        x = self.emb_dropout(self.item_embedding(seq.gather(1, to_front)))
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=length)
        # ... and back: position t of the input reads output (t + n_items_in_row) mod length
        to_back = ((positions + lengths.unsqueeze(1)) % length).unsqueeze(-1).expand(batch, length, out.shape[-1])
        states = out.gather(1, to_back) * keep.unsqueeze(-1)
        return self.dense(states)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[1:]
