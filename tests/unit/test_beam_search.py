"""Constrained beam search against two oracles: exhaustive scoring of every item, and transformers' own beam
search constrained by ``prefix_allowed_tokens_fn`` over the same trie."""

from __future__ import annotations

import random

import pytest
import torch

from recalign.decode import BeamConfig, beam_search
from recalign.decode.reference import generate_constrained
from recalign.index import ItemIndex
from recalign.llm.hooks import EmbeddingHook

EOS, PAD, VOCAB = 2, 0, 48


def peaked_llama(seed: int):
    """A tiny random Llama whose next-token distributions are far from uniform, so rankings have clear gaps."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def catalogue(seed: int, n_items: int) -> list[list[int]]:
    rng = random.Random(seed)
    items: list[list[int]] = []
    while len(items) < n_items:
        seq = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.2 and items:
            seq = items[-1][:max(1, len(items[-1]) - 1)] + seq[:1]  # long shared prefixes
        items.append(seq)
    return items


def prompts(seed: int, n: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, VOCAB) for _ in range(rng.randint(3, 9))] for _ in range(n)]


def exhaustive(model, prompt: list[int], index: ItemIndex, length_penalty: float) -> list[tuple[int, float]]:
    """Every distinct identifier scored by a full forward pass: sum of full-vocabulary log-probs / length**lp."""
    leaves = sorted(set(index.item_leaf.tolist()))
    scored = []
    for leaf in leaves:
        tokens = index.tokens(index.leaf_items(leaf)[0].item())
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        steps = logp[len(prompt) - 1:-1].gather(1, torch.tensor(tokens).unsqueeze(-1)).sum().item()
        scored.append((leaf, steps / len(tokens) ** length_penalty))
    return sorted(scored, key=lambda pair: -pair[1])


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_wide_beam_equals_exhaustive_scoring(length_penalty):
    model = peaked_llama(0)
    items = catalogue(1, 24)
    index = ItemIndex.from_sequences(items, EOS)
    n_leaves = len(set(index.item_leaf.tolist()))
    for beams in (n_leaves, n_leaves + 3):
        batch = prompts(2, 5)
        ranked = beam_search(model, batch, index, BeamConfig(num_beams=beams, length_penalty=length_penalty,
                                                             batch_size=3), pad_id=PAD)
        for prompt, result in zip(batch, ranked):
            expected = exhaustive(model, prompt, index, length_penalty)
            assert result.leaves == [leaf for leaf, _ in expected]
            assert result.scores == pytest.approx([score for _, score in expected], abs=1e-4)
            got_items = result.items(index)
            assert sorted(got_items) == list(range(len(items)))  # every item, each once, all real


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_agrees_with_transformers_generate_with_prefix_allowed_tokens(length_penalty):
    model = peaked_llama(3)
    items = catalogue(4, 300)
    index = ItemIndex.from_sequences(items, EOS)
    batch = prompts(5, 6)
    for beams in (4, 10):
        ours = beam_search(model, batch, index, BeamConfig(num_beams=beams, batch_size=4,
                                                           length_penalty=length_penalty), pad_id=PAD)
        theirs = generate_constrained(model, batch, index, beams, PAD, length_penalty=length_penalty)
        for mine, reference in zip(ours, theirs):
            assert mine.leaves == reference.leaves
            assert mine.scores == pytest.approx(reference.scores, abs=1e-4)
            assert all(index.is_leaf(torch.tensor(mine.leaves)))


def test_results_do_not_depend_on_batching():
    model = peaked_llama(6)
    index = ItemIndex.from_sequences(catalogue(7, 120), EOS)
    batch = prompts(8, 7)
    alone = [beam_search(model, [p], index, BeamConfig(num_beams=5), pad_id=PAD)[0] for p in batch]
    together = beam_search(model, batch, index, BeamConfig(num_beams=5, batch_size=7), pad_id=PAD)
    for a, b in zip(alone, together):
        assert a.leaves == b.leaves
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


class HistoryAtPlaceholder(EmbeddingHook):
    """Writes a vector made from the row's history at every placeholder token (as CF soft tokens are)."""

    placeholder = 3

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(VOCAB, 32)
        torch.nn.init.normal_(self.table.weight, std=2.0)

    def forward(self, embeds, input_ids, histories):
        out = embeds.clone()
        for row, history in enumerate(histories):
            out[row, input_ids[row] == self.placeholder] = self.table(torch.tensor(list(history))).sum(0)
        return out


@pytest.mark.parametrize("length_penalty", [1.0, 0.0])
def test_an_embedding_hook_agrees_with_generate_from_the_same_inputs_embeds(length_penalty):
    torch.manual_seed(9)
    model, hook = peaked_llama(10), HistoryAtPlaceholder()
    index = ItemIndex.from_sequences(catalogue(11, 200), EOS)
    batch = [p[:2] + [HistoryAtPlaceholder.placeholder] + p[2:] for p in prompts(12, 5)]
    histories = [[5 + u, 9 + 2 * u] for u in range(len(batch))]
    config = BeamConfig(num_beams=6, batch_size=3, length_penalty=length_penalty)
    ours = beam_search(model, batch, index, config, pad_id=PAD, embedding_hook=hook, histories=histories)
    theirs = generate_constrained(model, batch, index, 6, PAD, length_penalty=length_penalty, embedding_hook=hook,
                                  histories=histories)
    for mine, reference in zip(ours, theirs):
        assert mine.leaves == reference.leaves
        assert mine.scores == pytest.approx(reference.scores, abs=1e-4)
    plain = beam_search(model, batch, index, config, pad_id=PAD)
    assert [r.leaves for r in plain] != [r.leaves for r in ours]  # the hook's vectors do reach the model
