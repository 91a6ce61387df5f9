"""Mutation check: plant named errors in the core math, one at a time, and show that the tests catch each.

Every mutation is a text patch of one or more lines of ``src/recalign``, applied to a *temporary copy* of the
source tree (the working tree is never written, so a crash or a kill mid-run leaves nothing behind); the relevant
test files then run against the copy (``PYTHONPATH`` points at it) under the shared heavy-job lock, one mutation at
a time. A mutation is *killed* when the tests fail, *survived* when they pass. A patch whose text is no longer in
the source (the code changed) is reported as *stale*, never silently skipped. The unmutated copy runs first: it
must pass, or the table would prove nothing.

    python benchmarks/mutations.py --out docs/benchmarks/mutations.md     # takes the lock for each test run
    flock /tmp/recalign-heavy.lock python benchmarks/mutations.py --locked  # the caller holds it throughout
    python benchmarks/mutations.py --only metrics-ties-optimistic         # one mutation
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = "/tmp/recalign-heavy.lock"

TCA = ["tests/unit/test_tca.py"]
SID = ["tests/unit/test_sid.py"]
TSREC = ["tests/unit/test_tsrec.py"]
ALLMREC = ["tests/unit/test_allmrec.py"]
METRICS = ["tests/unit/test_metrics.py", "tests/unit/test_protocols.py"]
BEAM = ["tests/unit/test_beam_search.py"]
TRAINER = ["tests/unit/test_cf_sasrec_trainer.py"]
SEQUENCE = ["tests/integration/test_sequence_training.py"]
CHAIN = ["tests/unit/test_chain_examples.py"]
GRPO = ["tests/unit/test_grpo.py"]
RL = ["tests/integration/test_rl.py"]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str  # under src/recalign
    patches: tuple[tuple[str, str], ...]  # (exact text, replacement), each text found exactly once
    tests: tuple[str, ...]


def mutation(name: str, what: str, path: str, patches: list[tuple[str, str]], tests: list[str]) -> Mutation:
    return Mutation(name, what, path, tuple(patches), tuple(tests))


MUTATIONS = [
    # --- the sequence objective
    mutation("sequence-history-leak", "sequence rows: a target's history holds the target itself", "llm/recommender.py",
             [("            spans.append(TargetSpan(len(target_ids), len(tokens), items[position], "
               "tuple(items[:position])))",
               "            spans.append(TargetSpan(len(target_ids), len(tokens), items[position], "
               "tuple(items[:position + 1])))")], SEQUENCE),
    mutation("packing-positions-continue", "packing: position ids run on across packed rows", "llm/train.py",
             [("        position_ids[row, offset:offset + len(sequence)] = torch.arange(len(sequence))",
               "        position_ids[row, offset:offset + len(sequence)] = "
               "torch.arange(offset, offset + len(sequence))")],
             SEQUENCE),
    mutation("minionerec-histories-every-row", "--minionerec-train histories reads every valid row (valid targets "
             "leak into training)", "data/formats/minionerec.py",
             [("        first.setdefault(user, history)", "        first[user] = history")], CHAIN),
    # --- RL: GRPO over constrained beams
    mutation("grpo-std-biased", "GRPO advantages: the biased group std (TRL's is unbiased)", "align/grpo.py",
             [("    std = rewards.std(1, keepdim=True) if",
               "    std = rewards.std(1, keepdim=True, unbiased=False) if")], GRPO),
    mutation("grpo-kl-sign", "GRPO loss: the KL penalty rewarded instead of charged", "align/grpo.py",
             [("    per_token = -(ratio * advantages.unsqueeze(1) - beta * kl)",
               "    per_token = -(ratio * advantages.unsqueeze(1) + beta * kl)")], GRPO),
    mutation("grpo-rank-unnormalised", "rank penalty: not divided by the sum of the discounts", "align/grpo.py",
             [("    penalties = -discounts / discounts.sum()", "    penalties = -discounts")], GRPO),
    mutation("grpo-positions-after-padding", "shared-prompt log-probs: completion positions count the prompt's "
             "padding", "align/grpo.py",
             [("    start = prompt_mask.sum(-1)[owner].unsqueeze(1)",
               "    start = torch.full_like(prompt_mask.sum(-1)[owner].unsqueeze(1), prompt_mask.shape[1])")], GRPO),
    mutation("rl-resume-without-weights", "RL resume: the checkpoint's trainable weights are not loaded",
             "align/rl.py", [("    _load_trainable(policy, models, input_dir)", "    models.clear()")], RL),
    mutation("rl-sync-weights-swapped", "RL reference sync: alpha weighs the reference instead of the policy",
             "align/rl.py", [("        ref_parameter.mul_(1 - alpha).add_(parameter.detach(), alpha=alpha)",
                              "        ref_parameter.mul_(alpha).add_(parameter.detach(), alpha=1 - alpha)")], RL),
    # --- TCA4Rec: soft labels, loss, MSL
    mutation("tca-q-squared", "soft labels: q = (Z(child) / Z(node))^2 instead of the ratio", "align/tca.py",
             [("    return (z_child / z_node[pair_label]).log(), imprecise",
               "    return 2 * (z_child / z_node[pair_label]).log(), imprecise")], TCA),
    mutation("tca-beta-inverted", "soft labels: the CF temperature multiplies the scores", "align/tca.py",
             [("        scores /= beta", "        scores *= beta")], TCA),
    mutation("tca-alpha-swapped", "TCA loss: alpha weighs the one-hot label, 1 - alpha the CF distribution",
             "align/tca.py",
             [("    hard[labels.gold_pair] = _log(1.0 - alpha)", "    hard[labels.gold_pair] = _log(alpha)"),
              ("    return torch.logaddexp(hard, _log(alpha) + labels.log_q)",
               "    return torch.logaddexp(hard, _log(1.0 - alpha) + labels.log_q)")], TCA),
    mutation("tca-objective-soft-ce", "TCA loss: the reference objective replaced by soft cross-entropy",
             "align/tca.py",
             [("        loss = ce - _per_label_logsumexp(log_target + relative, labels)",
               "        loss = ce - labels.per_label_sum(log_target.exp() * relative)")], TCA),
    mutation("msl-no-tau", "MSL: the temperature tau is not applied", "align/tca.py",
             [("    relative = (logits[labels.pair_label, labels.tokens] - gold_logit[labels.pair_label]) / tau",
               "    relative = logits[labels.pair_label, labels.tokens] - gold_logit[labels.pair_label]")], TCA),
    mutation("msl-full-vocabulary", "MSL: normalised over the whole vocabulary, not the valid children",
             "align/tca.py",
             [("        ce = _per_label_logsumexp(relative, labels)",
               "        ce = F.cross_entropy(logits / tau, label_tokens, reduction=\"none\")")], TCA),
    # --- RQ-VAE and semantic IDs
    mutation("rqvae-beta-on-codebook", "RQ loss: the commitment weight beta on the codebook term", "index/rqvae.py",
             [("F.mse_loss(word, residual.detach()) + self.beta * F.mse_loss(residual, word.detach())",
               "self.beta * F.mse_loss(word, residual.detach()) + F.mse_loss(residual, word.detach())")], SID),
    mutation("rqvae-no-straight-through", "RQ-VAE: no straight-through estimator (the decoder's gradient never "
             "reaches the encoder)", "index/rqvae.py",
             [("        straight_through = latent + (quantised - latent).detach()",
               "        straight_through = quantised.detach()")], SID),
    mutation("rqvae-kmeans-init-no-residual", "k-means initialisation: every level fitted on the raw latent",
             "index/rqvae.py",
             [("            residual = residual - centroids[labels]\n        self.initialised.fill_(True)",
               "        self.initialised.fill_(True)")], SID),
    mutation("balance-farthest-code", "collision balancing: moved items take the farthest free code",
             "index/sid.py",
             [("            for candidate in np.argsort(distances[position], kind=\"stable\").tolist():",
               "            for candidate in np.argsort(-distances[position], kind=\"stable\").tolist():")], SID),
    mutation("balance-farthest-keeps", "collision balancing: the farthest member keeps the shared code",
             "index/sid.py",
             [("        for position in np.argsort(own, kind=\"stable\")[1:]:",
               "        for position in np.argsort(-own, kind=\"stable\")[1:]:")], SID),
    # --- TS-Rec SA-Init
    mutation("sainit-no-rescale", "SA-Init: the keyword mean is not rescaled to the mean row norm",
             "align/tsrec.py",
             [("            vector = vector * mean_norm / (vector.norm() + 1e-6)\n", "")], TSREC),
    mutation("sainit-keywords-glued", "SA-Init: keywords joined without spaces (other sub-words)",
             "align/tsrec.py",
             [("tokenizer(\" \".join(entry.keywords), add_special_tokens=False)",
               "tokenizer(\"\".join(entry.keywords), add_special_tokens=False)")], TSREC),
    # --- A-LLMRec
    mutation("allmrec-matching-positives-only", "stage 1: the matching loss leaves out the negatives",
             "align/allmrec.py",
             [("        matching = sum(F.mse_loss(zi, zt) for zi, zt in zip(latent_i, latent_t))",
               "        matching = F.mse_loss(latent_i[0], latent_t[0])")], ALLMREC),
    mutation("allmrec-negative-as-positive", "stage 1: the recommendation loss labels the negative 1",
             "align/allmrec.py",
             [("F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))",
               "F.binary_cross_entropy_with_logits(neg, torch.ones_like(neg))")], ALLMREC),
    mutation("allmrec-weights-swapped", "stage 1: item and text reconstruction weights swapped",
             "align/allmrec.py",
             [("config.item_weight * item_rec + config.text_weight * text_rec",
               "config.text_weight * item_rec + config.item_weight * text_rec")], ALLMREC),
    mutation("allmrec-warm-cold-swapped", "evaluation groups: warm and cold items swapped", "align/allmrec_llm.py",
             [("            \"warm items\": (target_counts", "            \"cold items\": (target_counts"),
              ("            \"cold items\": cold,", "            \"warm items\": cold,")], ALLMREC),
    mutation("allmrec-last-row-is-first", "one row per user: the user's first training row, not its last",
             "align/allmrec.py",
             [(".groupby(\"user\", sort=False).tail(1)", ".groupby(\"user\", sort=False).head(1)")], ALLMREC),
    # --- metrics
    mutation("metrics-ties-optimistic", "ranks: ties broken in the target's favour", "eval/metrics.py",
             [("    ranks = (scores >= target_scores).sum(axis=1).astype(np.float64) - 1",
               "    ranks = (scores > target_scores).sum(axis=1).astype(np.float64)")], METRICS),
    mutation("metrics-ndcg-discount", "NDCG: discount 1 / log2(rank + 3) instead of log2(rank + 2)",
             "eval/metrics.py",
             [("np.where(inside, 1.0 / np.log2(safe + 2), 0.0)", "np.where(inside, 1.0 / np.log2(safe + 3), 0.0)")],
             METRICS),
    mutation("metrics-nan-ranked", "a NaN score is ranked (the old behaviour) instead of refused", "eval/metrics.py",
             [("    if bad.any():\n        raise NonFiniteScores", "    if False:\n        raise NonFiniteScores")],
             METRICS),
    # --- beam search scoring
    mutation("beam-length-penalty-ignored", "beam scoring: always divided by the length (length penalty 0 ignored)",
             "decode/beam.py",
             [("        new_fin = (top_score / (step + 1) ** lp)", "        new_fin = (top_score / (step + 1))")],
             BEAM),
    mutation("beam-length-without-eos", "beam scoring: the length leaves out EOS (length penalty 1)",
             "decode/beam.py",
             [("        new_fin = (top_score / (step + 1) ** lp)",
               "        new_fin = (top_score / max(step, 1) ** lp)")], BEAM),
    mutation("beam-hook-ignored", "beam search: the embedding hook is not applied in the prefill", "decode/beam.py",
             [("        inputs = {\"inputs_embeds\": hooked_embeddings(model, ids.to(model.device), embedding_hook, "
               "histories)}", "        inputs = {\"input_ids\": ids.to(model.device)}")], BEAM),
    # --- training
    mutation("cf-nan-loss-kept", "CF trainer: a non-finite loss is trained on", "cf/trainer.py",
             [("            if not torch.isfinite(loss):", "            if False:")], TRAINER),
]


def apply(source: Path, item: Mutation) -> None:
    path = source / "recalign" / item.path
    text = path.read_text()
    for old, new in item.patches:
        found = text.count(old)
        if found != 1:
            raise LookupError(f"{item.name}: the patched text occurs {found} times in {item.path}")
        text = text.replace(old, new)
    path.write_text(text)


def run_tests(source: Path, tests: list[str], timeout: int, locked: bool) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1"}
    command = [*([] if locked else ["flock", LOCK]), sys.executable, "-m", "pytest", "-x", "-q", "-p",
               "no:cacheprovider", "-W", "ignore", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out", time.perf_counter() - started
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, re.M) or re.search(r"^ERROR (\S+)", output, re.M)
    return match.group(1).split("::")[-1] if match else "(see output)"


def cpu_name() -> str:
    """lscpu's model name and whether the CPU has avx512_bf16 / AMX (beside every timing)."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {'with ' + ' and '.join(extras) if extras else 'no avx512_bf16 / AMX'}"


def fresh_copy(workdir: Path) -> Path:
    source = workdir / "src"
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(ROOT / "src", source, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of the mutations to run (default: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--locked", action="store_true", help="the caller holds the heavy-job lock already")
    args = parser.parse_args()
    # a kill (timeout's SIGTERM) unwinds normally, so the temporary copy is removed too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    command = " ".join([*(["flock", LOCK] if args.locked else []), "python benchmarks/mutations.py", *sys.argv[1:]])
    lines = [f"Mutation check, `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
             f" Python {platform.python_version()}, {cpu_name()}). Each row: one planted error in a temporary copy "
             "of `src/`, the listed test files run against it (`pytest -x`), killed = the tests failed.", ""]
    with tempfile.TemporaryDirectory(prefix="recalign-mutants-") as tmp:
        workdir = Path(tmp)
        source = fresh_copy(workdir)
        probe = subprocess.run([sys.executable, "-c", "import recalign; print(recalign.__file__)"],
                               env={**os.environ, "PYTHONPATH": str(source)}, capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(source)):
            raise SystemExit(f"the copy is not what Python imports: {probe.stdout or probe.stderr}")
        files = sorted({t for m in chosen for t in m.tests})
        code, output, seconds = run_tests(source, files, args.timeout, args.locked)
        if code != 0:
            raise SystemExit(f"the unmutated source fails its tests; no mutation can be judged:\n{output[-3000:]}")
        lines += [f"Unmutated: {', '.join(files)} pass ({seconds:.0f} s).", "",
                  "| mutation | planted error | file | tests | result | first failing test | seconds |",
                  "|---|---|---|---|---|---|---|"]
        survived = 0
        for item in chosen:
            source = fresh_copy(workdir)
            try:
                apply(source, item)
            except LookupError as exc:
                lines.append(f"| `{item.name}` | {item.what} | {item.path} | – | **stale** ({exc}) | – | – |")
                print(lines[-1], flush=True)
                survived += 1
                continue
            code, output, seconds = run_tests(source, list(item.tests), args.timeout, args.locked)
            killed = code != 0
            survived += not killed
            failing = first_failure(output) if killed else "–"
            tests = ", ".join(Path(t).name for t in item.tests)
            lines.append(f"| `{item.name}` | {item.what} | {item.path} | {tests} | "
                         f"{'killed' if killed else '**survived**'} | {failing} | {seconds:.0f} |")
            print(lines[-1], flush=True)
    lines += ["", f"{len(chosen) - survived} of {len(chosen)} mutations killed."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    if survived:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
