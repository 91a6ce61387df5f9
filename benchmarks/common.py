"""What the benchmark scripts share: the machine line, amazon18 preparation, document sections, and running
``recalign`` commands resumably."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_AMAZON18 = REPO.parent / "shared" / "data" / "amazon18"


def machine() -> str:
    """The line every figure's document names its machine with: the CPU model and the instruction flags that
    decide its speed (AVX2, AVX-512, native bf16), cores, Python and system."""
    from recalign.precision import cpu_info

    return (f"{cpu_info().describe()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()}")


def prepare_amazon18(name: str, out: Path, source: Path = SHARED_AMAZON18, python: str = sys.executable) -> Path:
    """``recalign data prepare --format amazon18`` of one shipped dataset (skipped when ``out`` holds it)."""
    if not (out / "manifest.json").exists():
        subprocess.run([python, "-m", "recalign.cli", "data", "prepare", "--format", "amazon18", "--source",
                        str(source / name), "--out", str(out)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def write_section(document: Path, name: str, text: str, title: str) -> None:
    """Replaces the section ``name`` of a document shared by several benchmarks (created with ``title``)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.strip()}\n{end}"
    current = document.read_text() if document.exists() else f"# {title}\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    document.write_text(pattern.sub(lambda _: block, current) if pattern.search(current)
                        else current.rstrip() + "\n\n" + block + "\n")


def keep_files(source: Path, kept: Path, files: tuple[str, ...]) -> None:
    """Copies a finished step's small result files (those of ``files`` that exist under ``source``; nested paths
    land flat) into ``kept`` under docs/, so a report can be rewritten without the working folder."""
    kept.mkdir(parents=True, exist_ok=True)
    for file in files:
        if (source / file).exists():
            (kept / Path(file).name).write_bytes((source / file).read_bytes())


def add_runner_arguments(parser: argparse.ArgumentParser, work: Path, out: Path) -> None:
    """The options of a benchmark that runs its steps with ``CommandRunner``: seed, threads, working folder,
    Python, report file and a note for the report."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=work)
    parser.add_argument("--python", type=Path, default=Path(sys.executable))
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--note", default="", help="a paragraph for the report (e.g. what else ran meanwhile)")


class CommandRunner:
    """Runs ``recalign`` commands one at a time for a benchmark, each unless its output ``done`` exists (so an
    interrupted benchmark resumes), recording the command (for the report) and its time (``seconds-<done>.json``
    beside ``done``, so a resumed run still reports it). Standard error goes to ``work/logs/<name>.log``."""

    def __init__(self, work: Path, python: str | Path = sys.executable, dry: bool = False):
        self.work, self.python, self.dry = Path(work), str(python), dry  # dry: record the commands, run none
        self.commands: list[tuple[str, str]] = []
        self.seconds: dict[str, float | None] = {}

    def run(self, name: str, argv: list, done: Path, stdout: Path | None = None) -> float | None:
        argv = [str(a) for a in argv]
        self.commands.append((name, "recalign " + shlex.join(argv) + (f" > {stdout}" if stdout else "")))
        timing = done.parent / f"seconds-{done.name}.json"
        if not done.exists() and not self.dry:
            print(f"[{datetime.now():%H:%M:%S}] {name}", flush=True)
            log = self.log_path(name)
            log.parent.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            command = [self.python, "-m", "recalign.cli", *argv]
            with log.open("w") as errors:
                if stdout is None:  # one handle: two would overwrite each other's lines
                    subprocess.run(command, check=True, cwd=REPO, stdout=errors, stderr=subprocess.STDOUT)
                else:
                    with stdout.open("w") as output:
                        subprocess.run(command, check=True, cwd=REPO, stdout=output, stderr=errors)
            done.parent.mkdir(parents=True, exist_ok=True)
            timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
        self.seconds[name] = json.loads(timing.read_text())["seconds"] if timing.exists() else None
        return self.seconds[name]

    def log_path(self, name: str) -> Path:
        return self.work / "logs" / f"{name.replace(': ', '-').replace(' ', '-')}.log"

    def commands_block(self) -> list[str]:
        """The commands as run from the repository root (paths shown relative to it)."""
        def relative(command: str) -> str:
            return command.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")

        return ["```"] + [f"# {name}\n{relative(command)}" for name, command in self.commands] + ["```"]


def shown_command(script: str, hidden: tuple[str, ...] = ("--note",)) -> str:
    """The command line that produced a report, from the repository root, without options that only annotate it."""
    argv, shown = sys.argv[1:], []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in hidden:
            skip = True
        elif not arg.startswith(tuple(f"{h}=" for h in hidden)):
            shown.append(arg)
    return shlex.join([".venv/bin/python", f"benchmarks/{script}", *shown])

