"""torch's CPU threading when another heavy process shares the cores: step times of two workloads, alone and beside
a competitor, for several thread settings (docs/benchmarks/threads.md).

Workloads, each a training step repeated for ``--seconds`` after two warm-up steps:
- ``cf``: recalign's SASRec (preset tca4rec: hidden 64, 10 items, BCE; 20,669 items as Toys; batch 256): many
  small operations, so many OpenMP barriers per step;
- ``llm-mlp``: SmolLM2-135M-shaped MLP blocks (576 -> 1536 -> 576, fp32) forward and backward over 4 x 256 tokens:
  few large matrix products.

Settings (environment of the measured process): torch's default (as many threads as cores, libgomp's default wait
policy: spin, then sleep), 2 threads with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once when idle), 1 thread.
Each runs alone, then beside a competitor running the same workload with torch's default (what another user's job
does), and the passive setting also beside a passive competitor (two jobs that both use it). Processes of one run
start their measured steps together.

    .venv/bin/python benchmarks/threads_contention.py --seconds 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

from common import REPO, machine, shown_command, write_section

DOC = REPO / "docs" / "benchmarks" / "threads.md"
SETTINGS = {  # name -> (environment, torch threads or None for torch's choice)
    "torch default": ({}, None),
    "2 threads, OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "1 thread": ({}, 1),
}


def workload(name: str):
    import torch

    torch.manual_seed(0)
    if name == "cf":
        from recalign.cf.base import build_model

        model = build_model("sasrec", 20_669, preset="tca4rec")
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        seq = torch.randint(1, 20_670, (256, model.config.max_len))

        def step() -> None:
            optimiser.zero_grad()
            model.loss(seq, generator).backward()
            optimiser.step()
    else:
        blocks = torch.nn.Sequential(*(torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(),
                                                           torch.nn.Linear(1536, 576)) for _ in range(4)))
        x = torch.randn(4 * 256, 576)

        def step() -> None:
            blocks.zero_grad()
            blocks(x).square().mean().backward()
    return step


def worker(name: str, threads: int | None, seconds: float) -> None:
    """Warms up, says ready, waits for the go on stdin, then steps for ``seconds``; prints its step times."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    step = workload(name)
    for _ in range(2):
        step()
    print("ready", flush=True)
    sys.stdin.readline()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"steps": len(times), "median": statistics.median(times), "threads": torch.get_num_threads()}),
          flush=True)


def run_together(name: str, settings: list[str], seconds: float) -> list[dict]:
    """Starts one worker per setting, lets them all step at once, and returns their results in order."""
    processes = []
    for setting in settings:
        env, threads = SETTINGS[setting]
        base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        command = [sys.executable, __file__, "--worker", name, "--seconds", str(seconds)]
        processes.append(subprocess.Popen(command + (["--threads", str(threads)] if threads else []),
                                          env={**base, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True, cwd=REPO))
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [json.loads(process.stdout.readline()) for process in processes]
    for process in processes:
        process.wait(60)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.seconds)
        return 0

    started = datetime.now(timezone.utc)
    rows = ["| workload | measured process | competitor | its median step (ms) | × alone | competitor's median "
            "step (ms) |", "|---|---|---|---|---|---|"]
    for name in ("cf", "llm-mlp"):
        alone = {}
        runs = [(setting, None) for setting in SETTINGS] + [(setting, "torch default") for setting in SETTINGS] + \
            [("2 threads, OMP_WAIT_POLICY=PASSIVE", "2 threads, OMP_WAIT_POLICY=PASSIVE")]
        for setting, competitor in runs:
            results = run_together(name, [setting] + ([competitor] if competitor else []), args.seconds)
            measured = results[0]["median"] * 1000
            alone.setdefault(setting, measured)
            other = f"{results[1]['median'] * 1000:,.1f}" if competitor else "–"
            rows.append(f"| {name} | {setting} ({results[0]['threads']} threads) | {competitor or 'none'} | "
                        f"{measured:,.1f} | {measured / alone[setting]:.2f} | {other} |")
            print(rows[-1], flush=True)

    text = f"""## Threads under contention (`benchmarks/threads_contention.py`)

Produced by `{shown_command("threads_contention.py")}` (started {started:%Y-%m-%d %H:%M} UTC) on {machine()};
nothing else ran meanwhile (the benchmark held the shared lock). Median step time over
{args.seconds:g} s of steps; "× alone" is against the same setting's run without a competitor.

{chr(10).join(rows)}
"""
    write_section(DOC, "contention", text, "CPU threads under contention")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
