"""The item index: every catalogue item's identifier as a token sequence ending in EOS, stored as a flat trie.

Items are sorted lexicographically by their token sequences, so every trie node (a prefix) covers a contiguous
range ``[lo, hi)`` of sorted positions: the mass of the items under a prefix is a difference of prefix sums
(TCA4Rec's soft labels). Nodes are numbered breadth-first with siblings in token order, so the children of a
node are the consecutive ids ``child_ptr[n] .. child_ptr[n + 1] - 1`` (constrained decoding). A leaf is the node
reached by EOS; items sharing a whole identifier share one leaf and are told apart by id, never by decoded text.
The same structure serves titles and semantic IDs: only how the sequences are made differs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

INDEX_TENSORS = "index.safetensors"
INDEX_CONFIG = "index.json"


@dataclass
class IndexReport:
    items: int
    nodes: int
    max_depth: int  # tokens of the longest identifier, EOS included: the decoding budget
    shared_identifier_groups: int  # leaves holding more than one item
    shared_identifier_items: int
    prefix_items: int  # items whose identifier (without EOS) is the start of another item's
    roundtrip_mismatches: int = 0  # titles whose tokens do not decode back to the exact title (informational)

    def lines(self) -> list[str]:
        return [f"{self.items:,} items, {self.nodes:,} trie nodes, longest identifier {self.max_depth} tokens",
                f"{self.shared_identifier_items:,} items share an identifier with another "
                f"({self.shared_identifier_groups:,} groups; they share one leaf and are ranked together)",
                f"{self.prefix_items:,} identifiers are a prefix of another",
                f"{self.roundtrip_mismatches:,} titles do not decode back exactly (harmless: leaves map to item ids)"]


class ItemIndex:
    """A catalogue of ``n_items`` identifiers (item id = row of ``item_tokens``) as a flat trie."""

    def __init__(self, item_tokens: torch.Tensor, item_length: torch.Tensor, eos_id: int, kind: str = "title",
                 meta: dict | None = None):
        self.item_tokens = item_tokens.long()  # (n_items, max_depth), EOS included, -1 after it
        self.item_length = item_length.long()
        self.eos_id = int(eos_id)
        self.kind = kind
        self.meta = dict(meta or {})
        self._build()

    # construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_sequences(cls, sequences: list[list[int]], eos_id: int, kind: str = "title",
                       meta: dict | None = None) -> ItemIndex:
        """One identifier per item (item id = list position), without EOS: it is appended here."""
        if not sequences:
            raise ValueError("an item index needs at least one item")
        for item, seq in enumerate(sequences):
            if eos_id in seq:
                raise ValueError(f"item {item}: its identifier contains the EOS token {eos_id}")
        lengths = torch.tensor([len(s) + 1 for s in sequences])
        tokens = torch.full((len(sequences), int(lengths.max())), -1, dtype=torch.long)
        for item, seq in enumerate(sequences):
            tokens[item, :len(seq) + 1] = torch.tensor([*seq, eos_id])
        return cls(tokens, lengths, eos_id, kind, meta)

    def _build(self) -> None:
        tokens = self.item_tokens.numpy()
        lengths = self.item_length.numpy()
        n, depth = tokens.shape
        # lexsort's last key is the primary one; item id last so equal identifiers keep id order
        order = np.lexsort([np.arange(n)] + [tokens[:, d] for d in reversed(range(depth))])
        ordered, ordered_len = tokens[order], lengths[order]
        common = np.zeros(n, dtype=np.int64)  # common[j]: shared leading tokens of sorted rows j-1 and j
        if n > 1:
            common[1:] = np.cumprod(ordered[1:] == ordered[:-1], axis=1).sum(axis=1)

        node_lo, node_hi, node_depth, node_parent, node_token = [0], [n], [0], [-1], [-1]
        path = np.full((n, depth + 1), -1, dtype=np.int64)  # path[p, d]: node of sorted position p after d tokens
        path[:, 0] = 0
        for d in range(1, depth + 1):
            boundary = np.flatnonzero((common < d) | (np.arange(n) == 0))
            starts_at = ordered_len[boundary] >= d
            starts = boundary[starts_at]
            ends = np.append(boundary, n)[1:][starts_at]
            first_id = len(node_lo)
            reaching = np.flatnonzero(ordered_len >= d)
            path[reaching, d] = first_id + np.searchsorted(starts, reaching, side="right") - 1
            node_lo += starts.tolist()
            node_hi += ends.tolist()
            node_depth += [d] * len(starts)
            node_parent += path[starts, d - 1].tolist()
            node_token += ordered[starts, d - 1].tolist()

        self.order = torch.from_numpy(order)  # sorted position -> item id
        self.rank = torch.empty_like(self.order)
        self.rank[self.order] = torch.arange(n)  # item id -> sorted position
        self.node_lo = torch.tensor(node_lo)
        self.node_hi = torch.tensor(node_hi)
        self.node_depth = torch.tensor(node_depth)
        self.node_parent = torch.tensor(node_parent)
        self.node_token = torch.tensor(node_token)
        counts = torch.bincount(self.node_parent[1:], minlength=len(node_lo))
        self.child_ptr = torch.cat([torch.ones(1, dtype=torch.long), 1 + torch.cumsum(counts, 0)])
        self.item_path = torch.empty((n, depth + 1), dtype=torch.long)  # item id -> node after d tokens (-1 beyond)
        self.item_path[self.order] = torch.from_numpy(path)
        self.item_leaf = self.item_path[torch.arange(n), self.item_length]
        # (parent, token) keys are sorted because of the numbering: the child lookup is a binary search
        self._key_base = int(max(self.node_token.max().item(), self.eos_id)) + 1
        self._child_keys = self.node_parent[1:] * self._key_base + self.node_token[1:]

    # queries ------------------------------------------------------------------------------------------------

    @property
    def n_items(self) -> int:
        return self.item_tokens.shape[0]

    @property
    def n_nodes(self) -> int:
        return self.node_lo.shape[0]

    @property
    def max_depth(self) -> int:
        return self.item_tokens.shape[1]

    def tokens(self, item: int) -> list[int]:
        """The item's identifier tokens, EOS included."""
        return self.item_tokens[item, :self.item_length[item]].tolist()

    def is_leaf(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.node_token[nodes] == self.eos_id

    def children(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a batch of nodes: (child tokens, child node ids, valid mask), each (len(nodes), most children)."""
        first, count = self.child_ptr[nodes], self.child_ptr[nodes + 1] - self.child_ptr[nodes]
        width = max(int(count.max()), 1) if len(nodes) else 1
        offset = torch.arange(width)
        valid = offset < count.unsqueeze(-1)
        child = torch.where(valid, first.unsqueeze(-1) + offset, 0)
        return torch.where(valid, self.node_token[child], 0), child, valid

    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The child of each node along each token, -1 where the trie has no such edge."""
        keys = nodes * self._key_base + tokens
        pos = torch.searchsorted(self._child_keys, keys).clamp(max=len(self._child_keys) - 1)
        found = (self._child_keys[pos] == keys) & (tokens >= 0) & (tokens < self._key_base) & (nodes >= 0)
        return torch.where(found, pos + 1, -1)

    def walk(self, prefix: list[int]) -> int:
        """The node reached by a token prefix from the root, -1 if it leaves the trie."""
        node = 0
        for token in prefix:
            node = int(self.step(torch.tensor([node]), torch.tensor([token]))[0])
            if node < 0:
                return -1
        return node

    def allowed_tokens(self, prefix: list[int]) -> list[int]:
        """Tokens that continue ``prefix`` towards some item; [] off the trie or after EOS."""
        node = self.walk(prefix)
        if node < 0:
            return []
        return self.node_token[self.child_ptr[node]:self.child_ptr[node + 1]].tolist()

    def leaf_items(self, leaf: int) -> torch.Tensor:
        """The item ids carrying the identifier that ends at ``leaf`` (ascending ids)."""
        return self.order[self.node_lo[leaf]:self.node_hi[leaf]]

    def report(self) -> IndexReport:
        sizes = self.node_hi - self.node_lo
        leaves = torch.nonzero(self.is_leaf(torch.arange(self.n_nodes))).squeeze(-1)
        shared = leaves[sizes[leaves] > 1]
        before_eos = self.item_path[torch.arange(self.n_items), self.item_length - 1]
        fanout = self.child_ptr[before_eos + 1] - self.child_ptr[before_eos]
        return IndexReport(items=self.n_items, nodes=self.n_nodes, max_depth=self.max_depth,
                           shared_identifier_groups=len(shared), shared_identifier_items=int(sizes[shared].sum()),
                           prefix_items=int((fanout > 1).sum()),
                           roundtrip_mismatches=int(self.meta.get("roundtrip_mismatches", 0)))

    # persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"item_tokens": self.item_tokens.contiguous(), "item_length": self.item_length.contiguous()},
                  str(directory / INDEX_TENSORS))
        config = {"kind": self.kind, "eos_id": self.eos_id, "meta": self.meta, "report": asdict(self.report())}
        (directory / INDEX_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ItemIndex:
        directory = Path(directory)
        config = json.loads((directory / INDEX_CONFIG).read_text())
        tensors = load_file(str(directory / INDEX_TENSORS))
        return cls(tensors["item_tokens"], tensors["item_length"], config["eos_id"], config["kind"], config["meta"])
