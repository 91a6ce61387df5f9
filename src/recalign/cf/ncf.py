"""Non-sequential CF: BPR matrix factorisation (``MF``) and neural collaborative filtering (``NCF``, NeuMF).

The toolkit scores the whole catalogue for *any* history, users never seen in training included, so neither
model has a user-id embedding. As in FISM (Kabbur et al., 2013), a user is the mean of a *context* embedding
table over the items of their history (padding excluded; an empty history is the zero vector). Item order
within the history does not matter; only its most recent ``max_len`` items are kept.

- ``MF``: score(u, i) = <user, item_i> + bias_i, with the user pooled from the ``context`` table.
- ``NCF`` (He et al., 2017): a GMF branch (user_gmf ⊙ item_gmf) and an MLP branch (a ReLU tower over
  [user_mlp; item_mlp]) concatenated into one linear prediction layer. user_gmf and user_mlp are history
  means over their own context tables. ``mlp_layers`` follows the paper's code: ``mlp_layers[0]`` is the
  width of the concatenated input (each MLP embedding is half of it), the rest are the tower's layer widths.
  Full-catalogue scores never build the (users x items x features) tensor at once: the first tower layer is
  split into its user and item halves, projected once, and the rest of the tower runs on catalogue chunks
  sized to a fixed element budget.

Both train pairwise with BPR by default (``loss="bpr"``: one uniformly sampled negative per example); ``bce``
(one negative) and ``ce`` (softmax over the catalogue) also work. ``positions="last"`` (default) predicts the
target from the whole history; ``positions="all"`` also predicts every item of the history from the mean of
the items before it (prefix means), the sequence augmentation of the sequential models.

``item_vectors()`` is the item embedding table (rows of dataset items, padding excluded): for ``MF`` the
factors dotted with the user vector (the bias aside); for ``NCF`` the GMF item embeddings. ``user_vectors()``
is the pooled history: for ``MF`` (B, hidden); for ``NCF`` (B, hidden + mlp_layers[0] // 2), the GMF part
followed by the MLP part. NCF's scores are not a dot product of the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .base import PAD, CFConfig, CFModel, sample_negatives

# Most elements (users x items x features) one catalogue chunk of NCF's MLP branch may hold.
CHUNK_ELEMENTS = 2 ** 24
MAX_CHUNK_ITEMS = 4096


@dataclass
class MFConfig(CFConfig):
    loss: str = "bpr"
    positions: str = "last"


@dataclass
class NCFConfig(CFConfig):
    loss: str = "bpr"
    positions: str = "last"
    mlp_layers: list[int] = field(default_factory=lambda: [128, 64, 32])

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mlp_layers = [int(width) for width in self.mlp_layers]
        if len(self.mlp_layers) < 2 or self.mlp_layers[0] % 2 or min(self.mlp_layers) < 1:
            raise ValueError("mlp_layers needs an even input width followed by at least one layer width, "
                             f"e.g. [128, 64, 32]; got {self.mlp_layers}")


def mean_pool(table: nn.Embedding, seq: torch.Tensor, prefixes: bool = False) -> torch.Tensor:
    """Mean of ``table`` over the non-padding ids of each (B, L) row: (B, dim); zero for an empty row.

    With ``prefixes``, (B, L, dim): position t is the mean over the row's items up to and including t.
    """
    keep = (seq != PAD).unsqueeze(-1).to(table.weight.dtype)
    vectors = table(seq) * keep
    if prefixes:
        return vectors.cumsum(1) / keep.cumsum(1).clamp(min=1)
    return vectors.sum(1) / keep.sum(1).clamp(min=1)


def embedding(n_items: int, dim: int, std: float = 0.01) -> nn.Embedding:
    table = nn.Embedding(n_items + 1, dim, padding_idx=PAD)
    nn.init.normal_(table.weight, 0.0, std)
    with torch.no_grad():
        table.weight[PAD].zero_()
    return table


class HistoryPooledModel(CFModel):
    """Shared by MF and NCF: users pooled from context tables, pairwise or full-catalogue scoring, the loss.

    Subclasses list their context tables in ``context_tables`` (their pooled means are concatenated into the
    user vector) and define ``pair_scores`` (one score per user-item pair) and ``logits_from_users``.
    """

    def __init__(self, config: CFConfig, n_items: int):
        super().__init__(config, n_items)
        if config.loss == "cloze":
            raise ValueError(f"{self.model_type} trains with 'bpr', 'bce' or 'ce', not 'cloze'")
        self.dropout = nn.Dropout(config.dropout)

    def context_tables(self) -> list[nn.Embedding]:
        raise NotImplementedError

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(M, D) user vectors and (M,) shifted item ids -> (M,) scores."""
        raise NotImplementedError

    def logits_from_users(self, users: torch.Tensor) -> torch.Tensor:
        """(B, D) user vectors -> (B, N) scores of the whole catalogue."""
        raise NotImplementedError

    def pool(self, seq: torch.Tensor, prefixes: bool = False) -> torch.Tensor:
        return torch.cat([mean_pool(table, seq, prefixes) for table in self.context_tables()], dim=-1)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        return self.pool(seq)

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        return self.logits_from_users(self.user_vectors(seq))

    def loss(self, seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """BPR / BCE against one sampled negative, or CE over the catalogue, of each target given its history."""
        history = seq[:, :-1]
        if self.config.positions == "all":
            users, labels = self.pool(history, prefixes=True), seq[:, 1:]
        else:
            users, labels = self.pool(history), seq[:, -1]
        mask = labels != PAD
        users, labels = self.dropout(users[mask]), labels[mask]
        if self.config.loss == "ce":
            return F.cross_entropy(self.logits_from_users(users), labels - 1)
        negatives = sample_negatives(labels, self.n_items, generator)
        positive, negative = self.pair_scores(users, labels), self.pair_scores(users, negatives)
        if self.config.loss == "bpr":
            return -F.logsigmoid(positive - negative).mean()
        return F.binary_cross_entropy_with_logits(torch.cat([positive, negative]),
                                                  torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]))


class MF(HistoryPooledModel):
    """score(u, i) = <mean of context[h] over the history h, item[i]> + bias[i], trained with BPR."""

    model_type = "mf"
    config_class = MFConfig

    def __init__(self, config: MFConfig, n_items: int):
        super().__init__(config, n_items)
        self.context = embedding(n_items, config.hidden)
        self.item_emb = embedding(n_items, config.hidden)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))

    def context_tables(self) -> list[nn.Embedding]:
        return [self.context]

    def item_vectors(self) -> torch.Tensor:
        return self.item_emb.weight[1:]

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (users * self.item_emb(items)).sum(-1) + self.item_bias[items]

    def logits_from_users(self, users: torch.Tensor) -> torch.Tensor:
        return users @ self.item_vectors().T + self.item_bias[1:]


class NCF(HistoryPooledModel):
    """NeuMF over history-pooled users: predict([user_gmf ⊙ item_gmf; MLP([user_mlp; item_mlp])])."""

    model_type = "ncf"
    config_class = NCFConfig
    presets = {
        # the paper's code defaults: 8 predictive factors, MLP [64, 32, 16, 8], no dropout
        "neumf": dict(hidden=8, mlp_layers=[64, 32, 16, 8], dropout=0.0),
    }

    def __init__(self, config: NCFConfig, n_items: int):
        super().__init__(config, n_items)
        layers = config.mlp_layers
        self.mlp_dim = layers[0] // 2
        self.user_gmf = embedding(n_items, config.hidden)
        self.item_gmf = embedding(n_items, config.hidden)
        self.user_mlp = embedding(n_items, self.mlp_dim)
        self.item_mlp = embedding(n_items, self.mlp_dim)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:]))
        for layer in self.mlp:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.predict = nn.Linear(config.hidden + layers[-1], 1)

    def context_tables(self) -> list[nn.Embedding]:
        return [self.user_gmf, self.user_mlp]

    def item_vectors(self) -> torch.Tensor:
        """The GMF item embeddings (the MLP branch's item table is ``item_mlp``)."""
        return self.item_gmf.weight[1:]

    def split_users(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return users[..., :self.config.hidden], users[..., self.config.hidden:]

    def tower(self, first_layer_output: torch.Tensor) -> torch.Tensor:
        """The MLP branch from the first layer's pre-activation on: ReLU (and dropout) after every layer."""
        x = self.dropout(F.relu(first_layer_output))
        for layer in self.mlp[1:]:
            x = self.dropout(F.relu(layer(x)))
        return x

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf_user, mlp_user = self.split_users(users)
        gmf = gmf_user * self.item_gmf(items)
        mlp = self.tower(self.mlp[0](torch.cat([mlp_user, self.item_mlp(items)], dim=-1)))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def logits_from_users(self, users: torch.Tensor, chunk_items: int | None = None) -> torch.Tensor:
        """(B, N) scores; the MLP tower runs on catalogue chunks of ``chunk_items`` (default: by budget)."""
        gmf_user, mlp_user = self.split_users(users)
        w_gmf, w_mlp = self.predict.weight[0, :self.config.hidden], self.predict.weight[0, self.config.hidden:]
        scores = (gmf_user * w_gmf) @ self.item_vectors().T + self.predict.bias  # GMF branch: linear, no chunks
        first = self.mlp[0]  # [user; item] @ W.T + b == user @ W_user.T + (item @ W_item.T + b)
        user_part = mlp_user @ first.weight[:, :self.mlp_dim].T  # (B, h1)
        item_part = self.item_mlp.weight[1:] @ first.weight[:, self.mlp_dim:].T + first.bias  # (N, h1)
        if chunk_items is None:
            widest = max(self.config.mlp_layers[1:])
            chunk_items = min(MAX_CHUNK_ITEMS, max(1, CHUNK_ELEMENTS // max(1, len(users) * widest)))
        chunks = []
        for start in range(0, self.n_items, chunk_items):
            hidden = user_part[:, None, :] + item_part[None, start:start + chunk_items, :]  # (B, chunk, h1)
            chunks.append(self.tower(hidden) @ w_mlp)
        return scores + torch.cat(chunks, dim=1)
