"""The flat trie against a dictionary trie built the obvious way, on random catalogues with shared identifiers
and identifiers that are prefixes of others."""

from __future__ import annotations

import random

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import random_catalogue

from recalign.index import ItemIndex

EOS = 2




def prefix_table(catalogue: list[list[int]]) -> dict[tuple[int, ...], set[int]]:
    """Every prefix (EOS included) -> the items under it."""
    table: dict[tuple[int, ...], set[int]] = {}
    for item, seq in enumerate(catalogue):
        full = [*seq, EOS]
        for d in range(len(full) + 1):
            table.setdefault(tuple(full[:d]), set()).add(item)
    return table


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n_items=st.integers(1, 40))
def test_flat_trie_matches_dictionary_trie(seed, n_items):
    catalogue = random_catalogue(random.Random(seed), n_items)
    index = ItemIndex.from_sequences(catalogue, EOS)
    table = prefix_table(catalogue)
    assert index.n_nodes == len(table)
    for prefix, items in table.items():
        node = index.walk(list(prefix))
        assert node >= 0
        lo, hi = index.node_lo[node].item(), index.node_hi[node].item()
        assert set(index.order[lo:hi].tolist()) == items, prefix  # a node's items are one sorted range
        assert index.node_depth[node] == len(prefix)
        expected_children = sorted({p[len(prefix)] for p in table if len(p) == len(prefix) + 1 and p[:-1] == prefix})
        assert index.allowed_tokens(list(prefix)) == expected_children
        for token in expected_children:  # children are consecutive ids in token order
            child = index.walk([*prefix, token])
            assert index.node_parent[child] == node
    for item, seq in enumerate(catalogue):
        assert index.tokens(item) == [*seq, EOS]
        leaf = index.item_leaf[item].item()
        assert index.is_leaf(torch.tensor([leaf])).item()
        assert set(index.leaf_items(leaf).tolist()) == {i for i, s in enumerate(catalogue) if s == seq}
        for d in range(len(seq) + 2):
            assert index.item_path[item, d] == index.walk([*seq, EOS][:d])
    assert index.walk([99]) == -1 and index.allowed_tokens([99]) == []


def test_report_counts_shared_and_prefix_identifiers():
    index = ItemIndex.from_sequences([[5, 6, 7], [5, 6], [5, 6, 7], [9], [5, 8, 1]], EOS)
    report = index.report()
    assert (report.items, report.max_depth) == (5, 4)
    assert (report.shared_identifier_groups, report.shared_identifier_items) == (1, 2)
    assert report.prefix_items == 1  # [5, 6] starts [5, 6, 7]
    assert report.nodes == len(prefix_table([[5, 6, 7], [5, 6], [5, 6, 7], [9], [5, 8, 1]]))


def test_children_batch_and_step_agree_with_walk():
    catalogue = random_catalogue(random.Random(7), 200, n_tokens=20, longest=6)
    index = ItemIndex.from_sequences(catalogue, EOS)
    nodes = torch.arange(index.n_nodes)
    tokens, children, valid = index.children(nodes)
    for node in range(index.n_nodes):
        got = tokens[node][valid[node]].tolist()
        assert got == index.node_token[index.child_ptr[node]:index.child_ptr[node + 1]].tolist()
        assert index.step(torch.full((len(got),), node), torch.tensor(got, dtype=torch.long)).tolist() == \
            children[node][valid[node]].tolist()
    assert index.step(torch.tensor([0, 0]), torch.tensor([EOS + 1000, -1])).tolist() == [-1, -1]


def test_identifier_with_eos_inside_is_refused():
    try:
        ItemIndex.from_sequences([[4, EOS, 5]], EOS)
    except ValueError as error:
        assert "item 0" in str(error)
    else:
        raise AssertionError("an identifier containing EOS was accepted")


def test_save_and_load_round_trip(tmp_path):
    catalogue = random_catalogue(random.Random(3), 50)
    index = ItemIndex.from_sequences(catalogue, EOS, kind="sid", meta={"source": "test"})
    index.save_pretrained(tmp_path)
    loaded = ItemIndex.from_pretrained(tmp_path)
    assert (loaded.kind, loaded.eos_id, loaded.meta) == ("sid", EOS, {"source": "test"})
    for name in ("item_tokens", "order", "node_lo", "node_hi", "child_ptr", "item_path"):
        assert torch.equal(getattr(loaded, name), getattr(index, name)), name
