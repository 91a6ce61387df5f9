"""NextItNet (Yuan et al., 2019, "A Simple Convolutional Generative Network for Next Item Recommendation").

A stack of residual blocks of dilated *causal* 1-D convolutions over the item embeddings: every convolution
pads on the left only, so the state at position t has seen items up to t and never t + 1. Each block is the
paper's block (b), as in the authors' code and RecBole: conv (dilation d) -> layer norm -> ReLU -> conv
(dilation 2d) -> layer norm -> ReLU, plus the block's input; ``dilations`` lists each block's d, so the default
(1, 2, 4, 1, 2, 4) stacks the paper's {1, 2, 4} pattern twice. A final dense layer maps the last block's output
to the state, which scores every item by a dot product with the item embeddings; the model trains with
full-softmax cross-entropy at every position (``CFModel.next_item_loss``).

Padding: as SASRec here, padded positions are zeroed after the embedding and after every block, so the
left-padding of a history looks exactly like the convolutions' own zero padding and states depend on the
items alone, never on the padded length. The dense layer maps padded positions to its bias (the position
before the first item predicts first items from nothing).

Initialisation: every weight matrix and convolution kernel xavier normal, biases zero (layer norms at one and
zero), the padding row of the embedding zero. Embedding dropout uses ``dropout``; the blocks have none, as in
the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import PAD, CFConfig, CFModel


@dataclass
class NextItNetConfig(CFConfig):
    dilations: tuple[int, ...] = (1, 2, 4, 1, 2, 4)
    kernel_size: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        # a list after a JSON round trip, or "1,2,4" from a command line
        values = self.dilations.split(",") if isinstance(self.dilations, str) else self.dilations
        self.dilations = tuple(int(d) for d in values)
        if not self.dilations or min(self.dilations) < 1 or self.kernel_size < 1:
            raise ValueError("dilations must be positive integers (at least one) and kernel_size at least 1")


class CausalConv1d(nn.Module):
    """A dilated 1-D convolution over (B, L, C) that pads on the left only: output t sees inputs <= t."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x.transpose(1, 2), (self.left, 0))).transpose(1, 2)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv1 = CausalConv1d(channels, kernel_size, dilation)
        self.ln1 = nn.LayerNorm(channels, eps=1e-8)
        self.conv2 = CausalConv1d(channels, kernel_size, 2 * dilation)
        self.ln2 = nn.LayerNorm(channels, eps=1e-8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.ln1(self.conv1(x)))
        out = F.relu(self.ln2(self.conv2(out)))
        return out + x


class NextItNet(CFModel):
    model_type = "nextitnet"
    config_class = NextItNetConfig

    def __init__(self, config: NextItNetConfig, n_items: int):
        super().__init__(config, n_items)
        d = config.hidden
        self.item_embedding = nn.Embedding(n_items + 1, d, padding_idx=PAD)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.residual_blocks = nn.ModuleList(ResidualBlock(d, config.kernel_size, dilation)
                                             for dilation in config.dilations)
        self.final_layer = nn.Linear(d, d)
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear, nn.Conv1d)):
                nn.init.xavier_normal_(module.weight)
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_embedding.weight[PAD].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        keep = (seq != PAD).unsqueeze(-1)
        x = self.emb_dropout(self.item_embedding(seq)) * keep
        for block in self.residual_blocks:
            x = block(x) * keep
        return self.final_layer(x)

    def item_vectors(self) -> torch.Tensor:
        return self.item_embedding.weight[1:]
