"""A bounded load test of ``recalign serve`` on loopback: the same clients and histories against the server with
micro-batching off (``--max-batch 1``) and on, one server at a time; with ``--hostile``, the batched server calm and
then under attack.

Each mode starts the server as its own process (the CLI, as a user would), sends one warm-up request, then runs
``--clients`` concurrent clients for ``--seconds``: each posts ``/recommend`` (k 10) with the next of a fixed list of
random histories and waits for the answer before sending the next. Throughput counts answered requests; latency is
per request, as the client sees it; any non-200 answer or transport error is a failed request. The server's resident
memory is sampled every half second.

Under attack, two more clients run beside the well-behaved ones for the same time: one sends 50 MB bodies, one
after another (alternately with a declared Content-Length and chunked), and one posts a valid request and hangs up
before its answer (after 0.05-2 s, at random), again and again.

    .venv/bin/python benchmarks/serve_load.py --model runs/bench_llm/smollm2-lora-2000 --clients 16 --seconds 60
    .venv/bin/python benchmarks/serve_load.py --hostile --clients 16 --seconds 60   # builds its model if absent
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
from common import REPO, SHARED_AMAZON18, CommandRunner, machine, write_section

DOC = REPO / "docs" / "benchmarks" / "serve.md"
DOC_TITLE = "Serving: micro-batching under load"
HUGE = 50 * 1000 * 1000  # the attacker's body, as in issue 19


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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def huge_bodies(host: str, port: int, end: float, counts: dict, interval: float) -> None:
    """Starts sending a 50 MB body every ``interval`` seconds until ``end``, each until the server closes the
    connection; counts how each ended."""
    block = b"1," * (512 * 1024)  # 1 MiB, sent again and again
    declared = True
    while (started := time.perf_counter()) < end:
        reader, writer = await asyncio.open_connection(host, port)
        length = f"Content-Length: {HUGE}" if declared else "Transfer-Encoding: chunked"
        writer.write(f"POST /recommend HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{length}\r\n"
                     "\r\n".encode())
        answer = asyncio.ensure_future(reader.read())  # until the server closes the connection
        sent = 0
        try:
            while sent < HUGE and not answer.done():
                writer.write(block if declared else b"%x\r\n%s\r\n" % (len(block), block))
                await writer.drain()
                sent += len(block)
            if not declared:
                writer.write(b"0\r\n\r\n")
        except OSError:  # the server closed the connection while the body was still coming
            pass
        try:
            status = (await asyncio.wait_for(answer, 60))[9:12].decode() or "closed"
        except (OSError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__
        finally:
            answer.cancel()
            writer.close()
        counts[status] = counts.get(status, 0) + 1
        counts["MB sent"] = counts.get("MB sent", 0) + sent / 1e6
        declared = not declared
        await asyncio.sleep(max(0.0, started + interval - time.perf_counter()))


async def hang_ups(host: str, port: int, histories: list[list[int]], end: float, counts: dict) -> None:
    """Posts a valid request and closes the connection before the answer, again and again until ``end``."""
    rng = np.random.default_rng(1)
    while time.perf_counter() < end:
        body = json.dumps({"history": histories[int(rng.integers(len(histories)))], "k": 10}).encode()
        _, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /recommend HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        await writer.drain()
        await asyncio.sleep(float(rng.uniform(0.05, 2)))
        writer.close()
        counts["hung up"] = counts.get("hung up", 0) + 1


async def load(base: str, server: subprocess.Popen, histories: list[list[int]], clients: int,
               seconds: float, attack_interval: float | None = None) -> dict:
    import httpx

    latencies, failures, cursor, rss, attacks = [], 0, iter(range(10**9)), [], {}
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        await wait_ready(client, server)
        warm = await client.post("/recommend", json={"history": histories[0], "k": 10})
        warm.raise_for_status()
        start = time.perf_counter()
        end = start + seconds

        async def sample_memory() -> None:
            while time.perf_counter() < end:
                rss.append(rss_mb(server.pid))
                await asyncio.sleep(0.5)

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

        host, port = base.removeprefix("http://").split(":")
        attackers = [] if attack_interval is None else [huge_bodies(host, int(port), end, attacks, attack_interval),
                                                        hang_ups(host, int(port), histories, end, attacks)]
        await asyncio.gather(*(one_client() for _ in range(clients)), sample_memory(), *attackers)
        elapsed = time.perf_counter() - start
        health = (await client.get("/health")).json()
    lat = np.array(latencies)
    return {"answered": len(lat), "failed": failures, "seconds": elapsed, "throughput": len(lat) / elapsed,
            "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "calls": health["decoder_calls"], "histories": health["histories_decoded"],
            "dropped": health.get("dropped_requests", 0), "rss_start": rss[0], "rss_max": max(rss), "attacks": attacks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a folder written by `recalign llm train` (default: one built "
                                                   "by the script if absent: --backbone after one step on Toys, fp32)")
    parser.add_argument("--backbone", default="smollm2-135m", help="the built model's backbone ('tiny': a small random "
                                                                   "LLaMA, whose fast answers stress the server more)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-batch", type=int, default=16, help="the batched mode's histories per decoder call")
    parser.add_argument("--threads", type=int, default=2, help="the server's torch threads")
    parser.add_argument("--hostile", action="store_true", help="the batched server calm, then under attack")
    parser.add_argument("--attack-interval", type=float, default=0.5,
                        help="seconds between the starts of two 50 MB bodies (the attacker shares these cores)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_serve")
    args = parser.parse_args(argv)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:] if argv is None else argv)

    started = datetime.now(timezone.utc)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    built = [] if args.model else build_model(args.backbone, args.work_dir)
    args.model = args.model or args.work_dir / f"model-{args.backbone}"
    catalogue = json.loads((args.model / "config.json").read_text())["n_items"]
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, catalogue, size=int(rng.integers(3, 11))).tolist() for _ in range(4096)]
    batched = f"micro-batching (--max-batch {args.max_batch})"
    modes = ((f"calm, {batched}", args.max_batch, False), (f"under attack, {batched}", args.max_batch, True)) \
        if args.hostile else (("no micro-batching (--max-batch 1)", 1, False), (batched, args.max_batch, False))
    results = {}
    for name, max_batch, hostile in modes:
        port = free_port()
        server = start_server(args.model, port, max_batch, args.threads,
                              args.work_dir / f"server-{max_batch}{'-hostile' if hostile else ''}.log")
        try:
            results[name] = asyncio.run(load(f"http://127.0.0.1:{port}", server, histories, args.clients,
                                             args.seconds, args.attack_interval if hostile else None))
        finally:
            server.terminate()
            server.wait(30)
        print(name, results[name], flush=True)

    rows = ["| mode | answered | failed | requests/s | p50 latency (s) | p99 latency (s) | histories per call | "
            "server RSS (MB): start / max |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['answered']} | {r['failed']} | {r['throughput']:.2f} | {r['p50']:.2f} | "
                    f"{r['p99']:.2f} | {r['histories'] / max(r['calls'], 1):.1f} | {r['rss_start']:,.0f} / "
                    f"{r['rss_max']:,.0f} |")
    model = args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model
    setup = f"""Produced by `{command}` (started {started:%Y-%m-%d %H:%M} UTC) on {machine()};
the server with {args.threads} torch threads, the clients in the same machine. Model: `{model}` ({catalogue:,} items),
10 beams, k 10. {args.clients} concurrent clients for {args.seconds:g} s per mode, each posting `/recommend` with
the next of 4,096 random histories (3–10 items, seed 0) as soon as its previous answer arrived; one warm-up request
before the clock starts."""
    if built:
        setup += ("\n\nThe script built the model first (one training step: its answers are near arbitrary, but it "
                  "costs what a trained one does):\n\n" + "\n".join(built))
    first, second = results.values()
    if args.hostile:
        section, text = f"hostile-{args.model.name}", hostile_text(args.model.name, setup, rows, first, second,
                                                                     args.attack_interval)
    else:
        section, text = "load", f"""## Load test (`benchmarks/serve_load.py`)

{setup}

{chr(10).join(rows)}

**Micro-batching: {second['throughput'] / first['throughput']:.1f}× the throughput** at {args.clients} clients
(goal: at least 2×), {first['failed'] + second['failed']} failed requests in all. The mean histories per decoder
call include the warm-up request.
"""
    write_section(DOC, section, text, DOC_TITLE)
    print(text)
    return 0


def hostile_text(model: str, setup: str, rows: list[str], calm: dict, attacked: dict, interval: float) -> str:
    attacks = dict(attacked["attacks"])
    sent, hung_up = attacks.pop("MB sent", 0), attacks.pop("hung up", 0)
    endings = ", ".join(f"{count} {status}" for status, count in sorted(attacks.items()))
    ratio, throughput = attacked["p99"] / calm["p99"], attacked["throughput"] / calm["throughput"]
    return f"""## Under attack (`benchmarks/serve_load.py --hostile`), {model}

{setup}

Under attack, two more clients ran beside the well-behaved ones for the same time. One started a 50 MB body every
{interval:g} s (paced, because on this machine the attacker's own sending takes the server's cores), alternately with
a declared Content-Length and chunked, each sent until the server closed the connection: {sum(attacks.values())}
bodies, {sent:,.0f} MB written in all (the socket buffers take a few MB before the client sees the close), ended by
{endings} (the server answers 413 and closes without reading the rest, so the client's send is usually reset
before it reads that answer). The other posted a valid request and hung up 0.05–2 s later, again and again:
{hung_up} times; the server dropped {attacked['dropped']} of them before decoding (the others had reached the
decoder already or been answered).

{chr(10).join(rows)}

**Well-behaved clients under attack: {attacked['failed']} failed, p99 {ratio:.2f}× the calm run's** (goal: 0 failed,
at most 1.5×; a p99 of fewer than 100 answers is their slowest), throughput {throughput:.2f}× the calm run's; the
server's resident memory peaked at {attacked['rss_max']:,.0f} MB under attack, {calm['rss_max']:,.0f} MB calm.
"""


def build_model(backbone: str, work: Path) -> list[str]:
    """A servable recommender over Toys (one training step, fp32) in ``work/model-<backbone>``; returns the commands,
    for the report."""
    runner, data, model = CommandRunner(work), work / "toys", work / f"model-{backbone}"
    runner.run("data", ["data", "prepare", "--format", "amazon18", "--source", SHARED_AMAZON18 / "Toys_and_Games",
                        "--out", data], data / "manifest.json")
    runner.run(f"model-{backbone}", ["llm", "train", "--data", data, "--out", model, "--backbone", backbone,
                                     "--max-train-rows", 16, "--precision", "fp32", "--eval-rows", 8, "--threads", 2],
               model / "config.json")
    return runner.commands_block()


if __name__ == "__main__":
    raise SystemExit(main())
