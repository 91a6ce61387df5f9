"""TS-Rec's ablation at CPU scale: a base SID recommender, + SA-Init, + TS-Align, + both, and + TCA4Rec.

Every step is a ``recalign`` command (printed in the report), run one at a time:

- Industrial_and_Scientific (MiniOneRec / TS-Rec data): prepared with ``--minionerec-train valid`` (the data ships
  no train file, so the valid rows train and test stays untouched), the shipped SIDs imported, the shipped teacher
  keywords and descriptions (``description_keywords.json``) as token semantics.
- Toys_and_Games (amazon18): recalign's own SIDs (RQ-VAE over all-MiniLM-L6-v2 embeddings of the titles) and
  TF-IDF token semantics (no teacher file exists for them).
- Per dataset a SASRec (``cf train``) for the TCA4Rec arm; per arm SmolLM2-135M-Instruct, full fine-tuning (the
  reference's setting), the same number of training examples drawn from the task mix in its natural proportions
  (TS-Align's examples take their share of the same budget), one epoch, the same seed; evaluation by constrained
  10-beam search over SIDs on the first ``--test-rows`` test rows.

Finished steps are kept under ``--work`` (``result.json`` per arm), so an interrupted run resumes.

    .venv/bin/python benchmarks/tsrec_ablation.py --examples 512 --test-rows 150 --threads 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from common import REPO, CommandRunner, add_runner_arguments, machine, shown_command

SHARED = REPO.parent / "shared" / "data"
INDUSTRIAL = SHARED / "minionerec" / "Industrial_and_Scientific"
DOC = REPO / "docs" / "benchmarks" / "tsrec.md"
KS = (3, 5, 10)
ARMS = {"base": [], "sa-init": ["--sa-init"], "ts-align": ["--ts-align"], "both": ["--sa-init", "--ts-align"],
        "tca": ["--align", "tca", "--alpha", "0.1"]}
ARM_NAMES = {"base": "base SID recommender (T1 + T2 + T3)", "sa-init": "+ SA-Init", "ts-align": "+ TS-Align",
             "both": "+ SA-Init + TS-Align (TS-Rec)", "tca": "+ TCA4Rec (alpha 0.1, SASRec)"}
# MiniOneRec paper, Industrial test set (tsrec.md §7), for orientation only: other scale, other protocol details
PUBLISHED = {"SASRec": (.0790, .0700, .0909, .0748, .1088, .0806),
             "MiniOneRec": (.1143, .1011, .1321, .1084, .1586, .1167)}


def prepare(runner: CommandRunner, args, name: str) -> tuple[Path, Path, str, Path]:
    """(dataset, SIDs, semantics source, CF model) of one dataset."""
    work, threads = args.work / name, ["--threads", str(args.threads)]
    data, sids, cf = work / "data", work / "sids", work / "sasrec"
    if name == "Industrial_and_Scientific":
        runner.run(f"{name}: data", ["data", "prepare", "--format", "minionerec", "--source", str(INDUSTRIAL),
                                     "--out", str(data), "--minionerec-train", "valid"], data / "manifest.json")
        runner.run(f"{name}: SIDs", ["index", "import", "--data", str(data), "--out", str(sids)],
                   sids / "sids.json")
        semantics = str(INDUSTRIAL / "description_keywords.json")
    else:
        runner.run(f"{name}: data", ["data", "prepare", "--format", "amazon18", "--source",
                                     str(SHARED / "amazon18" / name), "--out", str(data)], data / "manifest.json")
        runner.run(f"{name}: SIDs", ["index", "build", "--kind", "sid", "--method", "rqvae", "--data", str(data),
                                     "--out", str(sids), "--epochs", str(args.rqvae_epochs), *threads],
                   sids / "sids.json")
        semantics = "tfidf"
    runner.run(f"{name}: SASRec", ["cf", "train", "--data", str(data), "--model", "sasrec", "--out", str(cf),
                                   "--epochs", "30", *threads], cf / "config.json")
    return data, sids, semantics, cf


def run_arm(runner: CommandRunner, args, name: str, arm: str, data: Path, sids: Path, semantics: str,
            cf: Path) -> dict:
    out = args.work / name / arm
    extra = [*ARMS[arm], *(["--cf", str(cf)] if arm == "tca" else [])]
    train_seconds = runner.run(f"{name}: {arm} train", [
        "llm", "train", "--data", str(data), "--out", str(out), "--backbone", "smollm2-135m", "--finetune", "full",
        "--sids", str(sids), "--semantics", semantics, *extra, "--max-examples", str(args.examples),
        "--epochs", "1", "--batch-size", "16", "--micro-batch-size", "4", "--lr", str(args.lr),
        "--warmup-steps", "5", "--seed", str(args.seed), "--eval-split", "", "--threads", str(args.threads)],
        out / "config.json")
    result = out / "result.json"
    runner.run(f"{name}: {arm} eval", [
        "llm", "eval", "--data", str(data), "--model", str(out), "--k", ",".join(map(str, KS)), "--beams", "10",
        "--max-rows", str(args.test_rows), "--threads", str(args.threads), "--json"], result, stdout=result)
    likelihood = out / "likelihood.json"
    runner.run(f"{name}: {arm} likelihood", [
        "llm", "likelihood", "--data", str(data), "--model", str(out), "--max-rows", str(args.test_rows),
        "--threads", str(args.threads), "--json"], likelihood, stdout=likelihood)
    record = json.loads(result.read_text())
    record["likelihood"] = json.loads(likelihood.read_text())
    log = (out / "train" / "train_log.csv").read_text().splitlines()
    record["train_seconds"] = train_seconds
    record["final_loss"] = float(log[-1].split(",")[2]) if len(log) > 1 else None
    record["task_mix"] = task_mix(data, sids, out, arm, args)
    return record


def task_mix(data: Path, sids: Path, out: Path, arm: str, args) -> str:
    """How many examples each task gave the arm: ``mix_tasks`` over the tasks' natural sizes (T1 and T3: one per
    training row; T2: one per distinct title and per distinct SID; TS-Align: two per token with a description)."""
    from recalign.data import load_dataset
    from recalign.index.sid import SemanticIDs
    from recalign.llm.tasks import mix_tasks

    dataset = load_dataset(data)
    rows = dataset.table("train").num_rows
    sizes = {"next_item": rows, "title_to_sid": len(set(dataset.titles)),
             "sid_to_title": len({tuple(s) for s in SemanticIDs.from_pretrained(sids, dataset).sids}),
             "next_title": rows}
    if "--ts-align" in ARMS[arm]:
        sizes["ts_align"] = 2 * sum(1 for e in json.loads((out / "token_semantics.json").read_text())
                                    if e["description"])
    _, counts = mix_tasks({name: [None] * n for name, n in sizes.items()}, args.examples, args.seed)
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def render(runner: CommandRunner, args, results: dict, stats: dict, started: str) -> str:
    lines = [
        "# TS-Rec ablation at CPU scale",
        "",
        f"Produced by `{shown_command('tsrec_ablation.py')}` from the "
        f"repository root (started {started}), on {machine()}; one step at a time, each the `recalign` command "
        "listed under *Commands*; finished steps are reused when the command is run again.",
        "",
        *([args.note, ""] if args.note else []),
        "## Setting",
        "",
        f"- **Backbone**: SmolLM2-135M-Instruct, bf16, full fine-tuning (as the reference), AdamW lr {args.lr}, "
        f"5 warm-up steps then linear decay, batch 16, **{args.examples} training examples per arm**, one epoch, "
        f"seed {args.seed}. The examples are drawn from the arm's task mix, every task cut by the same fraction "
        "(the reference's natural proportions); with TS-Align its examples take their share of the same budget.",
        "- **Tasks**: T1 history SIDs → next SID, T2 title ↔ SID (one per distinct title and SID), T3 history SIDs → "
        "next title (MiniOneRec's 3-task mix, T2 without the answer leak); TS-Align adds token → description and "
        "description → token, two per SID token. Prompts: MiniOneRec's Alpaca layout; the same prompt trains and "
        "evaluates T1 (the reference evaluates with a reworded prompt).",
        "- **SA-Init**: each SID token's row = the mean input embedding of its keywords' sub-words, rescaled to the "
        "mean row norm (SmolLM2 ties input and output embeddings, so the head row follows). Without it the new rows "
        "get transformers' mean resizing (the reference's default).",
        "- **TCA4Rec**: the base mix with α 0.1 soft labels from a SASRec (`cf train`, 30 epochs at most, early "
        "stopping on valid) over the same SID trie; only T1 rows get soft labels.",
        f"- **Evaluation**: constrained 10-beam search over the SID trie on the first {args.test_rows} test rows; a "
        "hit is the target *item* (items sharing a SID are ranked together, pessimistically); the lenient column "
        "counts any item with the target's SID, as MiniOneRec's string match does. *log p(target SID)* is the mean "
        "log-likelihood of the target's SID tokens and EOS given the prompt (`recalign llm likelihood`, teacher "
        "forcing on the same rows): at this budget few targets are hit, and it moves long before hit rates do. "
        "± is the 95% interval over rows.",
        f"- **Industrial_and_Scientific**: the shipped train file does not exist, so the {stats.get('ind_train', '?')}"
        " valid rows train (`--minionerec-train valid`) and test is untouched; shipped SIDs (3 levels, 48/256/256 "
        "codes used) and the shipped teacher keywords/descriptions (`description_keywords.json`).",
        "- **Toys_and_Games**: amazon18's 10,000 train rows; recalign's own SIDs (RQ-VAE, 3 × 256 codes, 32-d latent, "
        f"{args.rqvae_epochs} epochs, all-MiniLM-L6-v2 title embeddings, collisions balanced) and TF-IDF token "
        "semantics.",
        "",
        "## SIDs",
        "",
    ]
    for name, text in stats.items():
        if name != "ind_train":
            lines += [f"**{name}**", "", "```", text.strip(), "```", ""]
    lines += ["## Results", ""]
    for name, arms in results.items():
        lines += [f"### {name}", "",
                  "| arm | HR@3 | NDCG@3 | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@10 lenient (SID match) "
                  "| log p(target SID) | task mix | train s | final loss |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, record in arms.items():
            m, ci = record["metrics"], record["ci95"]
            cells = [f"{m[f'{kind}@{k}']:.4f} ± {ci[f'{kind}@{k}']:.4f}" for k in KS for kind in ("HR", "NDCG")]
            lenient = record["identifier_metrics"].get("HR@10", float("nan"))
            seconds = f"{record['train_seconds']:.0f}" if record.get("train_seconds") else "–"
            loss = f"{record['final_loss']:.3f}" if record.get("final_loss") is not None else "–"
            ll = record["likelihood"]
            lines.append(f"| {ARM_NAMES[arm]} | " + " | ".join(cells) + f" | {lenient:.4f} "
                         f"| {ll['log_likelihood']:.2f} ± {ll['ci95']:.2f} | {record['task_mix']} | {seconds} "
                         f"| {loss} |")
        lines.append("")
    lines += ["### Published figures, for orientation (MiniOneRec paper, Industrial test set)", "",
              "Full train split, Qwen-scale backbones, 10 epochs at batch 1024, beam 50, all 4,533 test rows: not "
              "comparable with the rows above, which train a 135M model on a few hundred examples on 2 CPU cores.",
              "", "| model | HR@3 | NDCG@3 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |", "|---|---|---|---|---|---|---|"]
    for model, values in PUBLISHED.items():
        lines.append(f"| {model} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    lines += ["", "## Commands", "", *runner.commands_block(), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="Industrial_and_Scientific,Toys_and_Games")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--test-rows", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rqvae-epochs", type=int, default=1000)
    add_runner_arguments(parser, REPO / "runs" / "bench_tsrec", DOC)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if not INDUSTRIAL.is_dir():
        print(f"{SHARED} is absent: this benchmark needs the shared data", file=sys.stderr)
        return 1
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    runner = CommandRunner(args.work, args.python)
    results, stats = {}, {}
    for name in args.datasets.split(","):
        data, sids, semantics, cf = prepare(runner, args, name)
        shown = subprocess.run([str(args.python), "-m", "recalign.cli", "index", "stats", str(sids)], cwd=REPO,
                               capture_output=True, text=True, check=True)
        stats[name] = shown.stdout
        if name == "Industrial_and_Scientific":
            counts = json.loads((data / "manifest.json").read_text())["counts"]["examples"]
            stats["ind_train"] = f"{counts['train']:,}"
        results[name] = {}
        for arm in args.arms.split(","):
            results[name][arm] = run_arm(runner, args, name, arm, data, sids, semantics, cf)
            args.out.write_text(render(runner, args, results, stats, started))
    args.out.write_text(render(runner, args, results, stats, started))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
