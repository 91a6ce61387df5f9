"""fp32 vs bf16 on the machine at hand: a matmul, a LoRA training step and constrained decoding of SmolLM2-135M.

Why: bf16 is fast only where the hardware computes it (a GPU, a CPU with avx512_bf16 or AMX); elsewhere torch
emulates it, and the default precision ``auto`` picks fp32 there (``recalign.precision``). This measures what
that choice is worth here, both precisions in one run, side by side:

- **matmul**: ``recalign.precision``'s micro-benchmark (one 256x576 by 576x1536 product, one thread, best of 3);
- **training**: ``sft_train`` (accelerate, LoRA r=8 on q/k/v/o, as ``recalign llm train``) on synthetic-catalogue
  prompts, 4 rows per step, weights and autocast in the precision; the median of the steps after the first;
- **decoding**: the constrained beam search (10 beams) over the synthetic catalogue's 1,500 titles, users in
  micro-batches of 4, after a warm-up call.

    .venv/bin/python benchmarks/precision.py --steps 3 --users 8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import REPO, machine

DOC = REPO / "docs" / "benchmarks" / "precision.md"
PRECISIONS = ("fp32", "bf16")


def synthetic_rows(n_rows: int, history: int = 10):
    """(titles, [(history item ids, target id)]) from the demo's synthetic catalogue: each user's first items."""
    from recalign.data.synth import generate

    data = generate(n_users=max(200, n_rows), n_items=1500, seed=0)
    titles = data.items["title"].tolist()
    position = {raw: n for n, raw in enumerate(data.items["item"])}
    rows = []
    for _, group in data.interactions.groupby("user", sort=False):
        items = [position[raw] for raw in group["item"]]
        if len(items) > history:
            rows.append((items[:history], items[history]))
        if len(rows) == n_rows:
            break
    return titles, rows


def train_steps(precision: str, titles, rows, steps: int, work: Path) -> dict:
    from recalign.index.titles import title_index
    from recalign.llm.backbones import LoraSettings, apply_lora, load_backbone
    from recalign.llm.prompts import encode_prompt, get_template
    from recalign.llm.train import SFTConfig, SFTExample, sft_train

    model, tokenizer = load_backbone("smollm2-135m", precision)
    model = apply_lora(model, LoraSettings())
    index = title_index(titles, tokenizer)
    template = get_template("tca4rec")
    examples = [SFTExample(encode_prompt(tokenizer, template, [titles[i] for i in history], "products"),
                           index.tokens(target), target, tuple(history)) for history, target in rows]
    config = SFTConfig(epochs=1, batch_size=4, micro_batch_size=4, lr=1e-4, warmup_steps=1, precision=precision,
                       seed=0, max_steps=steps, log_every=1000)
    result = sft_train(model, examples[:4 * steps], config, work / f"train-{precision}", progress=False,
                       pad_id=int(tokenizer.pad_token_id))
    seconds = [row["seconds"] for row in result.log]
    tokens = [row["tokens"] for row in result.log]
    return {"step_seconds": statistics.median(seconds[1:] or seconds), "first_step": seconds[0],
            "tokens_per_step": statistics.mean(tokens)}


def decode_users(precision: str, titles, rows, users: int) -> dict:
    from recalign.decode import BeamConfig, beam_search
    from recalign.index.titles import title_index
    from recalign.llm.backbones import load_backbone
    from recalign.llm.prompts import encode_prompt, get_template

    model, tokenizer = load_backbone("smollm2-135m", precision)
    model.eval()
    index = title_index(titles, tokenizer)
    template = get_template("tca4rec")
    prompts = [encode_prompt(tokenizer, template, [titles[i] for i in history], "products")
               for history, _ in rows[:users]]
    config = BeamConfig(num_beams=10, batch_size=4)
    with torch.no_grad():
        beam_search(model, prompts[:4], index, config, int(tokenizer.pad_token_id))  # warm-up
        started = time.perf_counter()
        ranked = beam_search(model, prompts, index, config, int(tokenizer.pad_token_id))
        seconds = time.perf_counter() - started
    return {"users_per_second": users / seconds, "seconds": seconds, "top1": [r.leaves[0] for r in ranked]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps per precision (the first is warm-up)")
    parser.add_argument("--users", type=int, default=8, help="users decoded per precision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DOC)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/precision.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = datetime.now(timezone.utc)

    from recalign.precision import auto_precision, time_matmul

    titles, rows = synthetic_rows(max(4 * args.steps, args.users))
    matmul = {p: time_matmul({"fp32": torch.float32, "bf16": torch.bfloat16}[p]) for p in PRECISIONS}
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for precision in PRECISIONS:
            print(f"[{datetime.now():%H:%M:%S}] {precision}: training", flush=True)
            train = train_steps(precision, titles, rows, args.steps, Path(work))
            print(f"[{datetime.now():%H:%M:%S}] {precision}: decoding", flush=True)
            results[precision] = {**train, **decode_users(precision, titles, rows, args.users)}
    fp32, bf16 = results["fp32"], results["bf16"]
    same_top1 = sum(a == b for a, b in zip(fp32["top1"], bf16["top1"]))
    choice = auto_precision()
    table = "\n".join([
        "| | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|",
        f"| matmul 256x576 by 576x1536, 1 thread (ms) | {matmul['fp32'] * 1e3:.2f} | {matmul['bf16'] * 1e3:.2f} "
        f"| {matmul['bf16'] / matmul['fp32']:.1f}x the time |",
        f"| LoRA training step, 4 rows, ~{fp32['tokens_per_step']:.0f} tokens (s, median after the first) "
        f"| {fp32['step_seconds']:.2f} | {bf16['step_seconds']:.2f} "
        f"| {bf16['step_seconds'] / fp32['step_seconds']:.1f}x the time |",
        f"| first training step (s) | {fp32['first_step']:.2f} | {bf16['first_step']:.2f} "
        f"| {bf16['first_step'] / fp32['first_step']:.1f}x |",
        f"| constrained decoding, 10 beams (users/s) | {fp32['users_per_second']:.2f} "
        f"| {bf16['users_per_second']:.2f} | {fp32['users_per_second'] / bf16['users_per_second']:.1f}x the "
        "time |",
    ])
    args.out.write_text(f"""# Precision: fp32 vs bf16 on the machine at hand

Produced by `{command}` (started {started:%Y-%m-%d %H:%M} UTC) from the repository root, under the shared
heavy-job lock (no other heavy job meanwhile), on **{machine()}**, torch {torch.__version__}, {args.threads}
threads; both precisions in this one run. SmolLM2-135M-Instruct; prompts (TCA4Rec template, 10 history titles)
and the title trie from the demo's synthetic catalogue (1,500 items). Training is `sft_train` with LoRA (r 8 on
q/k/v/o), weights and autocast in the column's precision, {args.steps} steps of 4 rows; decoding is the
constrained beam search over {args.users} users in calls of 4, after a warm-up call.

{table}

Top-1 title the same in both precisions for {same_top1} of {args.users} users (bf16 rounds the weights).

What `auto` chooses here: **{choice.precision}**, because {choice.reason}. On a CPU without avx512_bf16/AMX,
torch computes bf16 by conversion, so it costs time rather than saving it (issue 21 reports a far larger gap on
an AVX2-only CPU than on this one). Figures from another CPU say little about this one: rerun the script there.
""")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
