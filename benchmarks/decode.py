"""Constrained decoding: recalign's beam search vs transformers' ``generate`` + ``prefix_allowed_tokens_fn``.

Same model (SmolLM2-135M-Instruct, bf16), same TCA4Rec prompts of Toys_and_Games test users, same trie of all
20,669 titles, 10 beams, length penalty 1, and the same number of users per call. The two are timed in
alternating passes (transformers, recalign, transformers, recalign, ...) so that drift hits both; each pass
decodes every user once. Agreement is checked on the returned identifiers: the same ranked leaves, per user.

    .venv/bin/python benchmarks/decode.py --users 24 --passes 2 --batch 4,8 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import REPO, machine, prepare_amazon18, write_section

DOC = REPO / "docs" / "benchmarks" / "llm.md"
DOC_TITLE = "LLM recommender: decoding, training memory and a CPU-scale run"


def dict_trie(index) -> dict[tuple[int, ...], list[int]]:
    """The reference's lookup structure: every prefix -> its allowed next tokens."""
    table: dict[tuple[int, ...], set[int]] = {}
    for item in range(index.n_items):
        tokens = index.tokens(item)
        for d in range(len(tokens)):
            table.setdefault(tuple(tokens[:d]), set()).add(tokens[d])
    return {prefix: sorted(tokens) for prefix, tokens in table.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Toys_and_Games")
    parser.add_argument("--users", type=int, default=24, help="test rows decoded per pass")
    parser.add_argument("--passes", type=int, default=2, help="alternating timed passes per method")
    parser.add_argument("--beams", type=int, default=10)
    parser.add_argument("--batch", default="4,8", help="users per call, both methods (comma-separated sizes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_llm")
    parser.add_argument("--agreement", choices=("fp32", "bf16"),
                        help="only compare the two methods' results in this precision (no timing); own section")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/decode.py " + " ".join(sys.argv[1:] if argv is None else argv)

    from recalign.data import load_dataset
    from recalign.decode import BeamConfig, beam_search
    from recalign.decode.reference import generate_constrained
    from recalign.eval.protocols import split_histories
    from recalign.index.titles import title_index
    from recalign.llm.backbones import load_backbone
    from recalign.llm.prompts import encode_prompt, get_template

    dataset = load_dataset(prepare_amazon18(args.dataset, args.work_dir / "data" / args.dataset))
    model, tokenizer = load_backbone("smollm2-135m", args.agreement or "bf16")
    model.eval()
    index = title_index(dataset.titles, tokenizer)
    trie = dict_trie(index)
    template = get_template("tca4rec")
    histories = split_histories(*dataset.histories("test"))[:args.users]
    prompts = [encode_prompt(tokenizer, template, [dataset.titles[i] for i in h], "games") for h in histories]
    pad = tokenizer.pad_token_id

    calls = {"prefill": 0.0, "step": 0.0, "steps": 0}
    forward = model.forward

    def timed_forward(*a, **kw):  # where the time goes: prompt prefill vs one-token steps
        t0 = time.perf_counter()
        out = forward(*a, **kw)
        kind = "prefill" if kw["input_ids"].shape[1] > 1 else "step"
        calls[kind] += time.perf_counter() - t0
        calls["steps"] += kind == "step"
        return out

    model.forward = timed_forward

    def run(name: str, batch: int) -> list[list[int]]:
        if name == "transformers":
            return [r.leaves for s in range(0, len(prompts), batch)
                    for r in generate_constrained(model, prompts[s:s + batch], index, args.beams, pad,
                                                  lambda prefix: trie.get(tuple(prefix), []))]
        ranked = beam_search(model, prompts, index, BeamConfig(num_beams=args.beams, batch_size=batch), pad)
        return [r.leaves for r in ranked]

    batches = [int(b) for b in args.batch.split(",")]
    if args.agreement:
        with torch.no_grad():
            theirs, ours = run("transformers", batches[0]), run("recalign", batches[0])
        same = sum(a == b for a, b in zip(theirs, ours))
        text = f"""### Agreement in {args.agreement} (`{command}`)

The same comparison without timing, SmolLM2-135M in {args.agreement}, first {len(prompts)} {args.dataset} test rows,
{args.beams} beams, {batches[0]} users per call: identical ranked top-{args.beams} identifier lists for **{same} of
{len(prompts)}** users.
"""
        write_section(DOC, f"decode-agreement-{args.agreement}", text, DOC_TITLE)
        print(text)
        return 0
    times = {(name, b): [] for b in batches for name in ("transformers", "recalign")}
    split = {}
    leaves = {}
    started = datetime.now(timezone.utc)
    for p in range(args.passes):
        for (name, batch) in times:
            calls.update(prefill=0.0, step=0.0, steps=0)
            t0 = time.perf_counter()
            with torch.no_grad():
                leaves[name, batch] = run(name, batch)
            times[name, batch].append((time.perf_counter() - t0) / len(prompts))
            split[name, batch] = dict(calls)
            print(f"pass {p + 1} {name} batch {batch}: {times[name, batch][-1]:.3f} s/user", flush=True)

    lengths = [len(p) for p in prompts]
    rows, verdicts = [], []
    for batch in batches:
        hf_key, our_key = ("transformers", batch), ("recalign", batch)
        hf, ours = statistics.mean(times[hf_key]), statistics.mean(times[our_key])
        for key, label in ((hf_key, "transformers `generate` + `prefix_allowed_tokens_fn`"),
                           (our_key, "recalign `beam_search`")):
            c = split[key]
            rows.append(f"| {batch} | {label} | {statistics.mean(times[key]):.3f} | "
                        f"{', '.join(f'{t:.3f}' for t in times[key])} | {c['prefill'] / len(prompts):.3f} | "
                        f"{c['step'] / len(prompts):.3f} ({c['steps']} calls) |")
        a, b = leaves[hf_key], leaves[our_key]
        verdicts.append(f"- {batch} users per call: **recalign {hf / ours:.1f}× faster**; identical ranked "
                        f"top-{args.beams} lists for {sum(x == y for x, y in zip(a, b))} of {len(a)} users, identical "
                        f"top-1 for {sum(x[:1] == y[:1] for x, y in zip(a, b))}, mean overlap of the top-{args.beams} "
                        f"sets {statistics.mean(len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b)):.3f}.")
    text = f"""## Constrained decoding (`benchmarks/decode.py`)

Produced by `{command}` (started {started:%Y-%m-%d %H:%M} UTC) on {machine()}, torch {torch.__version__},
{args.threads} threads, nothing else heavy running. SmolLM2-135M-Instruct (bf16, untrained: decoding speed does
not depend on the weights), the TCA4Rec prompt (domain "games") of the first {len(prompts)} {args.dataset} test
rows (prompt {min(lengths)}–{max(lengths)} tokens, mean {statistics.mean(lengths):.0f}), a trie of all
{index.n_items:,} titles (longest identifier {index.max_depth} tokens), {args.beams} beams, length penalty 1, the same
users per call for both. transformers: `generate(num_beams={args.beams}, prefix_allowed_tokens_fn=…)` with a
prefix → allowed-tokens dictionary (the reference's lookup), `max_new_tokens` = the longest identifier. recalign:
`recalign.decode.beam_search`. {args.passes} alternating passes each; the prefill / step columns split the last
pass's model time between prompt prefill and one-token steps.

| users per call | method | s / user (mean of passes) | passes | prefill s / user | steps s / user |
|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(verdicts)}

Goal: at least 3× faster. In bf16 the two batch layouts round differently (transformers prefills each prompt once
per beam, recalign once per user), so near-tied beams may swap; in fp32 the unit tests require identical lists.
Where the time goes: transformers prefills the prompt once per beam; recalign prefills it once per user and copies
the KV cache to the beams, so its remaining cost is the one-token steps, which both share (the same beam rule
and so about the same number of steps; recalign drops a user from the batch as soon as its search has ended).
"""
    write_section(DOC, "decode", text, DOC_TITLE)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
