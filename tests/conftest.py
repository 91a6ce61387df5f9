from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Tiny models train faster on one thread, and two test processes on 2 cores must not oversubscribe them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite is a CPU one (CI has no GPU): its oracles build tensors on the CPU and its launches are gloo CPU
# processes, so on a GPU machine the GPUs stay hidden from it (and from the processes it launches).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from recalign.data.dataset import Dataset, item_table  # noqa: E402
from recalign.data.sequences import examples_from_lists  # noqa: E402

SHARED_DATA = Path(os.environ.get("RECALIGN_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real public data beside the checkout (../shared/data); tests needing it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


def write_csv_source(folder: Path, items: list[tuple], interactions: list[tuple],
                     item_header: str = "item,title,brand", log_header: str = "user,item,timestamp") -> Path:
    """A tiny source in the csv format; rows are written verbatim (tests put bad values in on purpose)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.csv").write_text(item_header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in items))
    (folder / "interactions.csv").write_text(
        log_header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in interactions))
    return folder


N_ITEMS = 12


def next_item(a: int, b: int) -> int:
    """The synthetic rule: the next item is a function of the last two (and of neither alone)."""
    return (a * b + 2 * a + 1) % N_ITEMS


def rule_dataset(n_users=30, length=8, seed=0, with_valid=False) -> Dataset:
    """Each user starts at a random pair and follows ``next_item``; test rows repeat each user's longest example
    (and so do the valid rows, ``with_valid``, for tests of the early-stopping bookkeeping)."""
    rng = np.random.default_rng(seed)
    train_rows, test_rows = [], []
    for user in range(n_users):
        sequence = rng.integers(0, N_ITEMS, 2).tolist()
        while len(sequence) < length:
            sequence.append(next_item(sequence[-2], sequence[-1]))
        train_rows += [(user, sequence[:k], sequence[k]) for k in range(2, length)]
        test_rows.append((user, sequence[:-1], sequence[-1]))

    def table(rows):
        return examples_from_lists([u for u, _, _ in rows], [str(u) for u, _, _ in rows], [h for _, h, _ in rows],
                                   [t for _, _, t in rows], [0] * len(rows))

    items = pd.DataFrame({"raw_id": [f"i{i}" for i in range(N_ITEMS)], "title": [f"t{i}" for i in range(N_ITEMS)]})
    valid = table(test_rows if with_valid else [])
    return Dataset(item_table(items), {"train": table(train_rows), "valid": valid, "test": table(test_rows)})


def random_catalogue(rng: random.Random, n_items: int, n_tokens: int = 8, longest: int = 5) -> list[list[int]]:
    """Identifiers over tokens 3 .. 3 + n_tokens - 1 (0-2 stay free for prompts and EOS), with items that share
    another's identifier and identifiers that are a prefix of another (possibly empty)."""
    catalogue: list[list[int]] = []
    for _ in range(n_items):
        roll = rng.random()
        if catalogue and roll < 0.2:
            catalogue.append(list(rng.choice(catalogue)))
        elif catalogue and roll < 0.35:
            other = rng.choice(catalogue)
            catalogue.append(other[:rng.randint(0, len(other))])
        else:
            catalogue.append([rng.randrange(3, 3 + n_tokens) for _ in range(rng.randint(1, longest))])
    return catalogue


def free_port() -> int:
    """A loopback TCP port nobody listens on (for launched processes' rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FSDP_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp.yaml"
FSDP_ON_CPU = Path(__file__).resolve().parent / "integration" / "fsdp_on_cpu.py"


def cpu_launch(*arguments: str | Path, tmp_path: Path, fsdp: bool = False,
               precision: str = "no") -> tuple[list[str], dict[str, str]]:
    """The command and environment of an ``accelerate launch`` of two gloo CPU processes (mixed precision
    ``precision``) running ``arguments`` (a script or ``-m module``, and its arguments). Without ``fsdp`` it is
    accelerate's torchrun launcher (``--multi_gpu``; with ACCELERATE_USE_CPU it runs gloo on CPU, where a bare
    ``--cpu`` launch starts a single process); with it, recipes/accelerate/fsdp.yaml, whose scripts turn
    accelerate's FSDP on for CPU (tests/integration/fsdp_on_cpu.py, found through PYTHONPATH)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(FSDP_ON_CPU.parent), os.environ.get("PYTHONPATH")]))}
    launcher = (["--config_file", str(FSDP_CONFIG)] if fsdp else
                ["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"])
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
               "--mixed_precision", precision, "--main_process_port", str(free_port()), *map(str, arguments)]
    return command, env


def launch_fsdp(*arguments: str | Path, tmp_path: Path, precision: str = "no") -> subprocess.CompletedProcess:
    """Runs ``cpu_launch(..., fsdp=True)`` to the end and checks it succeeded."""
    command, env = cpu_launch(*arguments, tmp_path=tmp_path, fsdp=True, precision=precision)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


# The loopback HTTP server the downloader tests fetch from.
PREFIX = "/mirror"


@dataclass
class Server:
    """What the loopback server serves and what it saw; ``files`` maps request paths to bodies."""

    base_url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    honour_range: bool = True
    cut_after: int | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def gets(self, path: str) -> list[dict[str, str]]:
        return [headers for p, headers in self.requests if p == path]


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers)))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match and state.honour_range:
                start = int(match[1])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if state.cut_after is not None:
                chunk = chunk[:state.cut_after]
            # counted before writing: the client may finish, and the test read this, before write returns
            state.sent[self.path] = state.sent.get(self.path, 0) + len(chunk)
            self.wfile.write(chunk)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}{PREFIX}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@contextmanager
def loopback_server(app) -> Iterator[str]:
    """Serves an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
