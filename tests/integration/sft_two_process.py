"""The multi-process half of test_llm_train's DDP test, and the model and data both halves share.

Run as ``accelerate launch --multi_gpu --num_processes 2 sft_two_process.py OUT MICRO_BATCH`` with
``ACCELERATE_USE_CPU=1`` (gloo on CPU); process 0 writes ``OUT/result.json`` (log, process count) and
``OUT/weights.pt`` (the final state dict).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

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


# 12 rows, global batch 8: step 2 is topped up from the epoch's first rows and step 3 starts epoch 2.
DDP_EXAMPLES = 12


def ddp_config(micro_batch_size: int) -> SFTConfig:
    return SFTConfig(epochs=2, batch_size=8, micro_batch_size=micro_batch_size, lr=1e-2, weight_decay=0.01,
                     warmup_steps=1, precision="fp32", log_every=1, max_steps=3)


def main(out: Path, micro_batch_size: int) -> None:
    from accelerate import PartialState

    model = tiny_llama()
    result = sft_train(model, random_examples(DDP_EXAMPLES), ddp_config(micro_batch_size), out, progress=False)
    state = PartialState()
    if state.is_main_process:
        torch.save(model.state_dict(), out / "weights.pt")
        (out / "result.json").write_text(json.dumps({"log": result.log, "num_processes": state.num_processes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
