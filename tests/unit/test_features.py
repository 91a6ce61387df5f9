"""CF features as soft tokens: the injector writes exactly MLP(CF embedding) at the placeholders and nothing
else; the SFT loop and the beam search read its embeddings; trainable=False is the reference's never-trained MLP."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from safetensors import safe_open  # noqa: E402

from recalign.align.features import CFFeatureInjector  # noqa: E402
from recalign.cf import build_model  # noqa: E402
from recalign.decode import BeamConfig, beam_search  # noqa: E402
from recalign.index import ItemIndex  # noqa: E402
from recalign.llm.train import LabelPositionLM, SFTConfig, SFTExample, collate, sft_train  # noqa: E402

N_ITEMS, EOS, PAD, VOCAB, HIDDEN = 12, 2, 0, 48, 32
USER, ITEM = 46, 47  # placeholder ids; catalogue and prompt text tokens stay below them


def cf_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("sasrec", N_ITEMS, hidden=8, max_len=6)


def injector(trainable: bool = True, max_history: int | None = None, hidden: int = HIDDEN) -> CFFeatureInjector:
    return CFFeatureInjector(cf_model(), USER, ITEM, hidden, trainable=trainable, max_history=max_history,
                             mlp_hidden=20, seed=1)


def llama(seed: int = 0, peaked: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=not peaked,
                         bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    if peaked:  # far-from-uniform next-token distributions: rankings with clear gaps
        with torch.no_grad():
            model.lm_head.weight.mul_(40.0)
    return model


def feature_prompt(rng: random.Random, history: list[int], shown: int | None = None) -> list[int]:
    """[BOS] [UserEmb] then, per history item shown, a few text tokens and [ItemEmb]; a text token at the end."""
    items = history if shown is None else history[-shown:]
    ids = [1, USER]
    for _ in items:
        ids += [rng.randrange(3, 44) for _ in range(rng.randint(1, 3))] + [ITEM]
    return ids + [rng.randrange(3, 44)]


def feature_examples(n: int, seed: int = 0) -> list[SFTExample]:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        history = [rng.randrange(N_ITEMS) for _ in range(rng.randint(1, 4))]
        target = [rng.randrange(3, 44) for _ in range(rng.randint(1, 3))] + [EOS]
        examples.append(SFTExample(feature_prompt(rng, history), target, item=i % N_ITEMS, history=tuple(history)))
    return examples


# --- the hook itself -----------------------------------------------------------------------------------------------

def test_the_hook_writes_mlp_of_the_cf_embeddings_at_the_placeholders_only():
    hook = injector(max_history=3)
    # row 0: left-padded, history of two items (both shown); row 1: right-padded, four items of which the last
    # three are shown
    ids = torch.tensor([[0, 0, 1, USER, 5, ITEM, 6, ITEM, 7],
                        [1, USER, 5, ITEM, 6, ITEM, 7, ITEM, 0]])
    histories = [(4, 9), (2, 3, 10, 11)]
    embeds = torch.randn(2, 9, HIDDEN, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hook(embeds, ids, histories)
        cf = hook.cf_model
        users = hook.user_mlp(cf.user_vectors(cf.pad([np.array(h) for h in histories])))
        items = hook.item_mlp(cf.item_embeddings())
    written = {(0, 3): users[0], (0, 5): items[4], (0, 7): items[9],
               (1, 1): users[1], (1, 3): items[3], (1, 5): items[10], (1, 7): items[11]}
    for (row, col), expected in written.items():
        torch.testing.assert_close(out[row, col], expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out[row, col], embeds[row, col])
    for row in range(2):
        for col in range(9):
            if (row, col) not in written:
                assert torch.equal(out[row, col], embeds[row, col])
    assert torch.equal(embeds, torch.randn(2, 9, HIDDEN, generator=torch.Generator().manual_seed(0)))  # not in place
    # the user embedding is the CF model's view of the full history, not of the shown part only
    assert not torch.allclose(users[1], hook.user_mlp(cf.user_vectors(cf.pad([np.array([3, 10, 11])])))[0])


def test_the_hook_refuses_prompts_that_disagree_with_the_history():
    hook = injector(max_history=3)
    ids = torch.tensor([[1, USER, 5, ITEM, 6, ITEM]])
    with pytest.raises(ValueError, match=r"row 0 holds 2 \[ItemEmb\] placeholder\(s\).*for 3 history item"):
        hook(torch.zeros(1, 6, HIDDEN), ids, [(1, 2, 3, 4)])
    with pytest.raises(ValueError, match=r"2 \[UserEmb\] placeholders"):
        hook(torch.zeros(1, 7, HIDDEN), torch.tensor([[USER, USER, 5, ITEM, 6, ITEM, 7]]), [(1, 2)])
    with pytest.raises(ValueError, match="1 rows but 2 histories"):
        hook(torch.zeros(1, 6, HIDDEN), ids, [(1, 2), (3, 4)])


def test_frozen_injector_is_the_reference_bug_and_the_cf_model_stays_frozen():
    frozen, trained = injector(trainable=False), injector(trainable=True)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert {n for n, p in trained.named_parameters() if p.requires_grad} == {
        f"{mlp}.{layer}.{kind}" for mlp in ("user_mlp", "item_mlp") for layer in (0, 2) for kind in ("weight", "bias")}
    for a, b in zip(frozen.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)  # the same seeded init either way
    trained.train()
    assert trained.user_mlp.training and not trained.cf_model.training  # CF dropout stays off



def test_a_shared_mlp_is_the_references_one_module_for_users_and_items(tmp_path):
    shared = CFFeatureInjector(cf_model(), USER, ITEM, HIDDEN, mlp_hidden=20, seed=1, shared_mlp=True)
    assert {n for n, _ in shared.named_parameters() if not n.startswith("cf_model.")} == {
        f"item_mlp.{layer}.{kind}" for layer in (0, 2) for kind in ("weight", "bias")}
    ids = torch.tensor([[1, USER, 5, ITEM, 7]])
    with torch.no_grad():
        out = shared(torch.zeros(1, 5, HIDDEN), ids, [(4,)])
        cf = shared.cf_model
        torch.testing.assert_close(out[0, 1], shared.item_mlp(cf.user_vectors(cf.pad([np.array([4])])))[0])
        torch.testing.assert_close(out[0, 3], shared.item_mlp(cf.item_embeddings())[4])
    shared.cf_model.raw_ids = [f"i{i}" for i in range(N_ITEMS)]
    loaded = CFFeatureInjector.from_pretrained(shared.save_pretrained(tmp_path), None)
    assert loaded.config.shared_mlp and loaded.user_mlp is None
    assert torch.equal(loaded(torch.zeros(1, 5, HIDDEN), ids, [(4,)]), out)


# --- the SFT loop ----------------------------------------------------------------------------------------------

def test_label_position_lm_with_a_hook_equals_the_lm_on_the_hooked_embeddings():
    model, hook = llama(), injector()
    batch = collate(feature_examples(5, seed=2), pad_id=PAD)
    assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # right padding is exercised
    lm = LabelPositionLM(model, hook)
    assert any(name.startswith("embedding_hook.item_mlp") for name, _ in lm.named_parameters())
    with torch.no_grad():
        logits = lm(batch.input_ids, batch.attention_mask, batch.position_ids, batch.label_rows, batch.label_cols,
                    batch.histories)
        embeds = hook(model.get_input_embeddings()(batch.input_ids), batch.input_ids, batch.histories)
        full = model(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
        plain = LabelPositionLM(model)(batch.input_ids, batch.attention_mask, batch.position_ids, batch.label_rows,
                                       batch.label_cols)
    torch.testing.assert_close(logits, full[batch.label_rows, batch.label_cols], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, plain, atol=1e-3)  # the hook matters
    with pytest.raises(ValueError, match="one history per row"):
        lm(batch.input_ids, batch.attention_mask, batch.position_ids, batch.label_rows, batch.label_cols)


@pytest.mark.parametrize("trainable", [True, False])
def test_training_updates_the_mlps_only_when_trainable_and_lora_either_way(tmp_path, trainable):
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(llama(), LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                                   target_modules=["q_proj", "v_proj"]))
    hook = injector(trainable=trainable)
    mlps = {n: p.detach().clone() for n, p in hook.named_parameters() if not n.startswith("cf_model.")}
    cf = {n: p.detach().clone() for n, p in hook.cf_model.named_parameters()}
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    config = SFTConfig(epochs=2, batch_size=4, micro_batch_size=2, lr=1e-2, weight_decay=0.0, warmup_steps=0,
                       precision="fp32", checkpoint_every=1000)
    sft_train(model, feature_examples(8), config, tmp_path, progress=False, pad_id=PAD, embedding_hook=hook)
    after = dict(hook.named_parameters())
    changed = [not torch.equal(after[n], p) for n, p in mlps.items()]
    assert all(changed) if trainable else not any(changed)  # frozen: bit-identical, the reference's bug
    assert all(torch.equal(after[f"cf_model.{n}"], p) for n, p in cf.items())
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n], p) for n, p in lora_b.items())
    with safe_open(tmp_path / "checkpoint" / "model.safetensors", "pt") as handle:  # trainable weights only
        saved = set(handle.keys())
    assert {f"embedding_hook.{n}" for n in mlps} <= saved if trainable else not any("embedding_hook" in k
                                                                                        for k in saved)
    assert not any("cf_model" in k for k in saved)


# --- the beam search -------------------------------------------------------------------------------------------

def exhaustive(model, hook, prompt: list[int], history: tuple[int, ...], index: ItemIndex) -> list[tuple]:
    """Every identifier scored by one full forward over the hooked embeddings of prompt + identifier."""
    scored = []
    for leaf in sorted(set(index.item_leaf.tolist())):
        tokens = index.tokens(index.leaf_items(leaf)[0].item())
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            embeds = hook(model.get_input_embeddings()(ids), ids, [history])
            logp = torch.log_softmax(model(inputs_embeds=embeds).logits[0].float(), -1)
        total = logp[len(prompt) - 1:-1].gather(1, torch.tensor(tokens).unsqueeze(-1)).sum().item()
        scored.append((leaf, total / len(tokens)))
    return sorted(scored, key=lambda pair: -pair[1])


def test_beam_search_with_the_hook_equals_exhaustive_scoring_of_the_hooked_embeddings():
    model, hook = llama(3, peaked=True), injector().eval()
    rng = random.Random(4)
    items = [[rng.randrange(3, 44) for _ in range(rng.randint(1, 3))] for _ in range(14)]
    items[5] = items[4][:1] + [9]  # a shared prefix
    index = ItemIndex.from_sequences(items, EOS)
    histories = [tuple(rng.randrange(N_ITEMS) for _ in range(rng.randint(1, 4))) for _ in range(5)]
    prompts = [feature_prompt(rng, list(h)) for h in histories]
    n_leaves = len(set(index.item_leaf.tolist()))
    ranked = beam_search(model, prompts, index, BeamConfig(num_beams=n_leaves, batch_size=3), pad_id=PAD,
                         embedding_hook=hook, histories=histories)
    plain = beam_search(model, prompts, index, BeamConfig(num_beams=n_leaves, batch_size=3), pad_id=PAD)
    for prompt, history, result, without in zip(prompts, histories, ranked, plain):
        expected = exhaustive(model, hook, prompt, history, index)
        assert result.leaves == [leaf for leaf, _ in expected]
        assert result.scores == pytest.approx([score for _, score in expected], abs=1e-4)
        assert without.scores != pytest.approx(result.scores, abs=1e-3)  # the hook matters
    with pytest.raises(ValueError, match="one history per prompt"):
        beam_search(model, prompts, index, BeamConfig(num_beams=3), pad_id=PAD, embedding_hook=hook)
