"""What the benchmark scripts share: the machine line, amazon18 preparation, and document sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_AMAZON18 = REPO.parent / "shared" / "data" / "amazon18"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


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
