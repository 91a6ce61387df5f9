"""A bounded load test of ``recalign serve`` on loopback: the same clients and histories against the server with
micro-batching off (``--max-batch 1``) and on, one server at a time.

Each mode starts the server as its own process (the CLI, as a user would), sends one warm-up request, then runs
``--clients`` concurrent clients for ``--seconds``: each posts ``/recommend`` (k 10) with the next of a fixed list of
random histories and waits for the answer before sending the next. Throughput counts answered requests; latency is
per request, as the client sees it; any non-200 answer or transport error is a failed request.

    .venv/bin/python benchmarks/serve_load.py --model runs/bench_llm/smollm2-lora-2000 --clients 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import REPO, machine, write_section

DOC = REPO / "docs" / "benchmarks" / "serve.md"
DOC_TITLE = "Serving: micro-batching under load"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, max_batch: int, threads: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "recalign.cli", "serve", "--model", str(model), "--port", str(port),
               "--max-batch", str(max_batch), "--threads", str(threads)]
    return subprocess.Popen(command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


async def wait_ready(client, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError("the server did not start")


async def load(base: str, server: subprocess.Popen, histories: list[list[int]], clients: int,
               seconds: float) -> dict:
    import httpx

    latencies, failures, cursor = [], 0, iter(range(10**9))
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await wait_ready(client, server)
        warm = await client.post("/recommend", json={"history": histories[0], "k": 10})
        warm.raise_for_status()
        start = time.perf_counter()
        end = start + seconds

        async def one_client() -> None:
            nonlocal failures
            while time.perf_counter() < end:
                history = histories[next(cursor) % len(histories)]
                sent = time.perf_counter()
                try:
                    answer = await client.post("/recommend", json={"history": history, "k": 10})
                    ok = answer.status_code == 200 and len(answer.json()["items"]) == 10
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failures += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        health = (await client.get("/health")).json()
    lat = np.array(latencies)
    return {"answered": len(lat), "failed": failures, "seconds": elapsed, "throughput": len(lat) / elapsed,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "calls": health["decoder_calls"], "histories": health["histories_decoded"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a folder written by `recalign llm train`")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched mode's histories per decoder call")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_serve")
    args = parser.parse_args(argv)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:] if argv is None else argv)

    started = datetime.now(timezone.utc)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    catalogue = json.loads((args.model / "config.json").read_text())["n_items"]
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, catalogue, size=int(rng.integers(3, 11))).tolist() for _ in range(4096)]
    results = {}
    for name, max_batch in (("no micro-batching (--max-batch 1)", 1),
                            (f"micro-batching (--max-batch {args.max_batch})", args.max_batch)):
        port = free_port()
        server = start_server(args.model, port, max_batch, args.threads, args.work_dir / f"server-{max_batch}.log")
        try:
            results[name] = asyncio.run(load(f"http://127.0.0.1:{port}", server, histories, args.clients,
                                             args.seconds))
        finally:
            server.terminate()
            server.wait(30)
        print(name, results[name], flush=True)

    rows = ["| mode | answered | failed | requests/s | p50 latency (s) | p99 latency (s) | histories per call |",
            "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['answered']} | {r['failed']} | {r['throughput']:.2f} | {r['p50']:.2f} | "
                    f"{r['p99']:.2f} | {r['histories'] / max(r['calls'], 1):.1f} |")
    plain, batched = results.values()
    text = f"""## Load test (`benchmarks/serve_load.py`)

Produced by `{command}` (started {started:%Y-%m-%d %H:%M} UTC) on {machine()}; the server with
{args.threads} torch threads, the clients in the same machine. Model: `{args.model.relative_to(REPO) if
args.model.is_relative_to(REPO) else args.model}` ({catalogue:,} items), 10 beams, k 10. {args.clients} concurrent
clients for {args.seconds:g} s per mode, each posting `/recommend` with the next of 4,096 random histories (3–10 items,
seed 0) as soon as its previous answer arrived; one warm-up request before the clock starts.

{chr(10).join(rows)}

**Micro-batching: {batched['throughput'] / plain['throughput']:.1f}× the throughput** at {args.clients} clients
(goal: at least 2×), {plain['failed'] + batched['failed']} failed requests in all. The mean histories per decoder
call include the warm-up request.
"""
    write_section(DOC, "load", text, DOC_TITLE)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
