"""Precision ``auto``: bf16 where the CPU (or GPU) computes it natively, fp32 elsewhere, with the detection mocked;
the resolved precision lands in the saved recommender's config; an explicit bf16 on a CPU that emulates it warns
with the measured slowdown."""

from __future__ import annotations

import json

import pytest

from recalign import precision
from recalign.precision import CPUInfo, parse_cpuinfo, resolve_precision

AVX2_ONLY = CPUInfo("AMD EPYC 7B12", frozenset({"sse4_2", "avx", "avx2", "fma"}))
AVX512_NO_BF16 = CPUInfo("Intel(R) Xeon(R) Processor @ 2.80GHz", frozenset({"avx2", "avx512f", "avx512_vnni"}))
WITH_AVX512_BF16 = CPUInfo("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_bf16"}))
WITH_AMX = CPUInfo("Intel(R) Xeon(R) Platinum 8481C", frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}))


@pytest.fixture
def machine(monkeypatch):
    """Sets the CPU the detection sees (no GPU); the benchmark fails the test if it runs unasked."""
    monkeypatch.setattr(precision, "_announced", set())
    monkeypatch.setattr(precision, "_gpu", lambda: None)

    def use(info: CPUInfo, slowdown: float | None = None) -> None:
        monkeypatch.setattr(precision, "cpu_info", lambda: info)

        def measured() -> float:
            assert slowdown is not None, "the micro-benchmark ran where the flags decide"
            return slowdown

        monkeypatch.setattr(precision, "bf16_slowdown", measured)

    return use


@pytest.mark.parametrize(("info", "expected"), [(AVX2_ONLY, "fp32"), (AVX512_NO_BF16, "fp32"),
                                                (WITH_AVX512_BF16, "bf16"), (WITH_AMX, "bf16")])
def test_auto_follows_the_cpu_flags(machine, capsys, info, expected):
    machine(info)
    assert resolve_precision("auto") == expected
    assert resolve_precision("auto") == expected
    announced = capsys.readouterr().err
    assert announced.count(f"precision auto -> {expected}") == 1  # once per process, with its reason
    assert info.model in announced


@pytest.mark.parametrize(("slowdown", "expected"), [(0.7, "bf16"), (1.0, "bf16"), (3.2, "fp32")])
def test_without_readable_flags_the_micro_benchmark_decides(machine, slowdown, expected):
    machine(CPUInfo("arm", None), slowdown)
    assert resolve_precision("auto") == expected


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_measured_slowdown(machine):
    machine(AVX2_ONLY, 24.7)
    with pytest.warns(UserWarning, match=r"AMD EPYC 7B12.*24\.7x the time of an fp32 one"):
        assert resolve_precision("bf16") == "bf16"
    machine(WITH_AMX)  # native: no measurement, no warning
    assert resolve_precision("bf16") == "bf16"
    assert resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16")


def test_a_gpu_decides_before_the_cpu(machine, monkeypatch):
    import torch

    machine(AVX2_ONLY)
    monkeypatch.setattr(precision, "_gpu", lambda: "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto") == "fp32"


def test_cpuinfo_parsing():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\n" \
          "model name\t: other\nflags\t\t: avx512_bf16\n"
    info = parse_cpuinfo(x86)
    assert info.model == "AMD EPYC 7B12" and info.flags == {"fpu", "avx", "avx2", "fma"} and not info.native_bf16
    assert info.describe() == "AMD EPYC 7B12 (avx2; no avx512_bf16/amx_bf16)"
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert arm.native_bf16 == ["bf16"]
    assert parse_cpuinfo("").flags is None


def test_the_micro_benchmark_runs_once_per_machine(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("RECALIGN_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_info", lambda: AVX2_ONLY)
    times = {torch.float32: 0.01, torch.bfloat16: 0.3}
    calls = []
    monkeypatch.setattr(precision, "time_matmul", lambda dtype: calls.append(dtype) or times[dtype])
    precision.bf16_slowdown.cache_clear()
    try:
        assert precision.bf16_slowdown() == pytest.approx(30.0)
        precision.bf16_slowdown.cache_clear()  # a new process: read from the cache file
        assert precision.bf16_slowdown() == pytest.approx(30.0)
    finally:
        precision.bf16_slowdown.cache_clear()
    assert len(calls) == 2
    (entry,) = json.loads((tmp_path / precision.BENCHMARK_FILE).read_text()).values()
    assert entry["cpu"] == "AMD EPYC 7B12" and entry["slowdown"] == pytest.approx(30.0)


@pytest.mark.parametrize(("info", "expected"), [(AVX2_ONLY, "fp32"), (WITH_AVX512_BF16, "bf16")])
def test_the_resolved_precision_is_in_the_saved_config(machine, tmp_path, info, expected):
    from tests.conftest import rule_dataset

    from recalign.llm.recommender import LLMRecommender, RecommenderConfig

    machine(info)
    config = RecommenderConfig(backbone="tiny", finetune="full")
    assert config.precision == "auto"
    recommender = LLMRecommender.create(rule_dataset(), config)
    assert recommender.config.precision == expected
    assert str(next(recommender.model.parameters()).dtype) == {"fp32": "torch.float32", "bf16": "torch.bfloat16"}[
        expected]
    recommender.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["recommender"]["precision"] == expected
