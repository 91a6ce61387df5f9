"""The numeric precision of training and decoding: ``"auto"`` (the default), ``"bf16"`` or ``"fp32"``.

``auto`` is bf16 where the hardware computes it natively and fp32 elsewhere: on a CUDA GPU, bf16 when the GPU
supports it; on a CPU, bf16 only with the avx512_bf16 or amx_bf16 instructions (``bf16`` on Arm), read from
/proc/cpuinfo, or, where the flags cannot be read (macOS, Windows), when a one-off micro-benchmark (cached per
machine) finds a bf16 matmul no slower than an fp32 one. Without native instructions torch emulates bf16, which
costs time instead of saving it (docs/benchmarks/precision.md; issue 21 reports a demo heading for five hours on an
AVX2 CPU). The choice and its reason are printed once per process; an explicit ``bf16`` on a CPU without
native support warns with the measured slowdown.

Only the standard library is imported at module level: the CLI's start-up must not pay for torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .cache import cache_dir

PRECISIONS = ("auto", "bf16", "fp32")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 (AVX-512 BF16, AMX), Arm (FEAT_BF16)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", *BF16_FLAGS)  # what a benchmark's machine line names
BENCHMARK_FILE = "bf16-benchmark.json"
_announced: set[str] = set()


@dataclass(frozen=True)
class CPUInfo:
    model: str
    flags: frozenset[str] | None  # None: not readable on this system (no /proc/cpuinfo)

    @property
    def native_bf16(self) -> list[str]:
        return [flag for flag in BF16_FLAGS if self.flags is not None and flag in self.flags]

    def describe(self) -> str:
        """The model and the flags that matter for speed, e.g. ``"AMD EPYC 7B13 (avx2; no avx512_bf16/amx_bf16)"``."""
        if self.flags is None:
            return f"{self.model} (instruction flags not readable)"
        shown = [flag for flag in SHOWN_FLAGS if flag in self.flags]
        lacking = "" if self.native_bf16 else "; no avx512_bf16/amx_bf16"
        return f"{self.model} ({', '.join(shown) or 'none of ' + '/'.join(SHOWN_FLAGS)}{lacking})"


@cache
def cpu_info() -> CPUInfo:
    """This machine's CPU model name and instruction flags, from /proc/cpuinfo where there is one."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> CPUInfo:
    """The first processor's model name and flags (x86 ``flags``, Arm ``Features``) in /proc/cpuinfo's text."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
    return CPUInfo(model or platform.processor() or platform.machine() or "unknown CPU", flags)


def _benchmark_key(info: CPUInfo) -> str:
    import torch

    text = json.dumps([info.model, sorted(info.flags or []), torch.__version__, platform.machine()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_matmul(dtype, repeats: int = 3) -> float:
    import time

    import torch

    # One projection of SmolLM2-135M (576 -> 1536) over 256 tokens, on one thread so the figure does not depend on
    # how many cores are free.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(256, 576, generator=generator).to(dtype)
        b = torch.randn(576, 1536, generator=generator).to(dtype)
        a @ b  # warm-up (kernel selection)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        return best
    finally:
        torch.set_num_threads(threads)


@cache
def bf16_slowdown() -> float:
    """How many times longer a bf16 matmul takes than an fp32 one on this CPU: measured once (about a second where
    bf16 is emulated) and cached in ``cache_dir()/bf16-benchmark.json`` per CPU model, flags and torch version."""
    import torch

    info = cpu_info()
    path = cache_dir() / BENCHMARK_FILE
    key = _benchmark_key(info)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict) and "slowdown" in cached[key]:
        return float(cached[key]["slowdown"])
    fp32, bf16 = time_matmul(torch.float32), time_matmul(torch.bfloat16)
    cached[key] = {"cpu": info.model, "fp32_seconds": fp32, "bf16_seconds": bf16, "slowdown": bf16 / fp32}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the measurement again next time
    return bf16 / fp32


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "bf16" or "fp32"
    reason: str


def _gpu() -> str | None:
    """The CUDA GPU's name, or None when none is visible (only then is the CPU's support what counts)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def auto_precision() -> PrecisionChoice:
    """What ``"auto"`` resolves to on this machine, and why."""
    import torch

    gpu = _gpu()
    if gpu is not None:
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", f"the GPU ({gpu}) computes bf16 natively")
        return PrecisionChoice("fp32", f"the GPU ({gpu}) does not support bf16")
    info = cpu_info()
    if info.flags is not None:
        if info.native_bf16:
            return PrecisionChoice("bf16", f"the CPU has {'/'.join(info.native_bf16)} ({info.model})")
        return PrecisionChoice("fp32", f"the CPU lacks avx512_bf16/amx_bf16, so bf16 would be emulated and slower "
                                       f"({info.describe()})")
    slowdown = bf16_slowdown()
    verdict = "bf16" if slowdown <= 1.0 else "fp32"
    return PrecisionChoice(verdict, f"a bf16 matmul took {slowdown:.1f}x the time of an fp32 one on this CPU "
                                    f"({info.model}; measured once, cached)")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def _announce(message: str) -> None:
    if message not in _announced:
        _announced.add(message)
        print(message, file=sys.stderr, flush=True)


def resolve_precision(precision: str) -> str:
    """``"bf16"`` or ``"fp32"`` for a requested precision: ``"auto"`` is resolved (the choice and its reason printed
    once per process), an explicit one kept, with a warning when it is bf16 on a CPU that only emulates it."""
    check_precision(precision)
    if precision == "auto":
        choice = auto_precision()
        _announce(f"precision auto -> {choice.precision}: {choice.reason}")
        return choice.precision
    if precision == "bf16" and _gpu() is None and not cpu_info().native_bf16:
        message = (f"bf16 on a CPU without native bf16 ({cpu_info().describe()}): a bf16 matmul took "
                   f"{bf16_slowdown():.1f}x the time of an fp32 one here; precision 'auto' or 'fp32' avoids this")
        if message not in _announced:
            _announced.add(message)
            warnings.warn(message, stacklevel=2)
    return precision
