"""The multi-process half of test_llm_train's DDP and FSDP tests, and the model and data both halves share.

Run as ``accelerate launch --multi_gpu --num_processes 2 sft_two_process.py OUT MICRO_BATCH [MAX_STEPS]
[PRECISION]`` (MAX_STEPS: default 3, 0 = all; PRECISION: fp32, or bf16 with the ``FloatFeatures`` hook) with
``ACCELERATE_USE_CPU=1`` (gloo on CPU); every process writes its final state dict to ``OUT/weights_RANK.pt``,
process 0 ``OUT/result.json`` (log, process count). Launched with ``recipes/accelerate/fsdp.yaml``
(``tests.conftest.cpu_launch``) it trains under FSDP and resumes from ``OUT``'s checkpoint when there is one;
every process then checks it holds the trained weights, whole.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from recalign.llm.backbones import seeded_draws
from recalign.llm.hooks import EmbeddingHook
from recalign.llm.train import SFTConfig, SFTExample, sft_train

VOCAB = 512


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def random_examples(n: int, seed: int = 0) -> list[SFTExample]:
    """Prompts of 2-8 tokens, identifiers of 1-4 tokens plus EOS, some with untrained tokens: label counts vary."""
    generator = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int, size: int = 1) -> list[int]:
        return torch.randint(low, high, (size,), generator=generator).tolist()

    examples = []
    for i in range(n):
        prompt = draw(3, VOCAB, draw(2, 9)[0])
        target = draw(3, VOCAB, draw(1, 5)[0]) + [2]
        mask = None if i % 3 else [bool(b) for b in draw(0, 2, len(target))]
        examples.append(SFTExample(prompt, target, item=i, history=tuple(draw(0, 50, 3)), label_mask=mask))
    return examples


class FloatFeatures(EmbeddingHook):
    """Adds a linear map of float32 per-row features (from the history) to the input embeddings, as the CF-feature
    and A-LLMRec hooks feed float32 CF vectors through their trained MLPs."""

    def __init__(self, hidden_size: int = 32):
        super().__init__()
        with seeded_draws(0):
            self.linear = torch.nn.Linear(4, hidden_size)

    def forward(self, embeds, input_ids, histories):
        features = torch.tensor([[*history, 50] for history in histories], dtype=torch.float32,
                                device=embeds.device) / 50
        return embeds + self.linear(features)[:, None, :].to(embeds.dtype)


# 12 rows, global batch 8: step 2 is topped up from the epoch's first rows and step 3 starts epoch 2.
DDP_EXAMPLES = 12


def ddp_config(micro_batch_size: int) -> SFTConfig:
    return SFTConfig(epochs=2, batch_size=8, micro_batch_size=micro_batch_size, lr=1e-2, weight_decay=0.01,
                     warmup_steps=1, precision="fp32", log_every=1, max_steps=3)


def main(out: Path, micro_batch_size: int, max_steps: int | None, precision: str = "fp32") -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    fsdp = os.environ.get("ACCELERATE_USE_FSDP") == "true"
    if fsdp:
        from fsdp_on_cpu import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()
    model = tiny_llama()
    config = replace(ddp_config(micro_batch_size), max_steps=max_steps, precision=precision)
    hook = FloatFeatures() if precision == "bf16" else None
    result = sft_train(model, random_examples(DDP_EXAMPLES), config, out, progress=False, resume=fsdp,
                       embedding_hook=hook)
    state = PartialState()
    assert (state.distributed_type == DistributedType.FSDP) == fsdp
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())  # whole, not shards
    torch.save(model.state_dict(), out / f"weights_{state.process_index}.pt")
    if state.is_main_process:
        (out / "result.json").write_text(json.dumps({"log": result.log, "num_processes": state.num_processes}))


if __name__ == "__main__":
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    main(Path(sys.argv[1]), int(sys.argv[2]), steps or None, *sys.argv[4:5])
