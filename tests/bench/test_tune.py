"""Batch tuner: the sweep's search order, the recommendation, out of memory survived and
reported. The real engine runs in tests/bench/test_bench_cli.py; here an engine that runs
out of memory above a batch size stands in for a GPU that does (a failure this machine
cannot cause), and it streams real deltas through the sweep's measuring code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from babeldesk.bench.report import tune_plot, tune_table
from babeldesk.bench.tune import (
    EngineHandle,
    TuneConfig,
    TunePoint,
    is_oom,
    next_batches,
    recommend,
    tune,
)
from babeldesk.errors import ConfigError, OutOfMemory
from babeldesk.types import ChatRequest, TextDelta, Usage


class TinyEngine:
    """Generates ``max_tokens`` tokens for each request; a decode step costs a fixed 2 ms
    for the whole batch, so throughput grows with the batch as on a real accelerator."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.sem = asyncio.Semaphore(batch)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[TextDelta]:
        n = request.params.max_tokens or 1
        async with self.sem:
            for i in range(n):
                await asyncio.sleep(0.002 * (1 + self.batch / 16))
                yield TextDelta("x") if i < n - 1 else TextDelta(
                    "x", finish_reason="length", usage=Usage(5, n))


def _factory(oom_at: int, calls: list[int]):  # type: ignore[no-untyped-def]
    def make(batch: int, length: int) -> EngineHandle:
        calls.append(batch)
        if batch >= oom_at:
            raise OutOfMemory(f"CUDA out of memory. Tried to allocate {batch} GiB")
        return EngineHandle(TinyEngine(batch), lambda: None, lambda: batch,
                            memory_estimate_bytes=batch * 2**20)

    return make


CFG = TuneConfig(max_model_lens=(256,), max_tokens=4, requests_per_slot=2, slo_p99_ms=10_000)


def test_doubles_until_oom_then_refines() -> None:
    calls: list[int] = []
    report = tune(_factory(oom_at=16, calls=calls), CFG, model="m", backend="fake")
    assert calls[:5] == [1, 2, 4, 8, 16]  # doubling until the OOM point
    assert report.oom_batch_size == 16
    oom = [p for p in report.points if p.oom]
    assert [p.batch_size for p in oom] == [16] and "out of memory" in oom[0].note
    assert calls[5:] == [6]  # refine between the two best: 4 and 8
    assert report.recommended is not None and not report.recommended.oom
    assert report.recommended.tokens_per_s == max(p.tokens_per_s for p in report.points)
    for p in report.points:
        if not p.oom:
            assert p.requests == 2 * p.batch_size and p.errors == 0 and p.p99_ms > 0


def test_memory_cap_stops_before_loading_and_extra_lengths() -> None:
    calls: list[int] = []
    base = psutil.Process().memory_info().rss  # the cap also applies to the measured RSS
    cap_mb = base // 2**20 + 250
    cfg = TuneConfig(max_model_lens=(256, 512), max_tokens=4, memory_cap_mb=cap_mb,
                     refine=False, slo_p99_ms=10_000)
    report = tune(_factory(oom_at=10**6, calls=calls), cfg, model="m", backend="fake",
                  estimate=lambda b, n: base + b * 100 * 2**20)
    assert calls == [1, 2, report.recommended.batch_size]  # type: ignore[union-attr]
    capped = [p for p in report.points if p.oom]
    assert capped[0].batch_size == 4 and "cap" in capped[0].note
    assert {p.max_model_len for p in report.points} == {256, 512}


def test_recommendation_respects_the_slo() -> None:
    pts = [TunePoint(1, 256, tokens_per_s=10, p99_ms=100, meets_slo=True, requests=2),
           TunePoint(2, 256, tokens_per_s=30, p99_ms=900, meets_slo=False, requests=4),
           TunePoint(4, 256, tokens_per_s=20, p99_ms=150, meets_slo=True, requests=8)]
    assert recommend(pts, 256).batch_size == 4  # type: ignore[union-attr]
    assert recommend(pts, 512) is None
    assert next_batches(pts) == [3]
    assert next_batches(pts[:1]) == []


def test_oom_detection_and_config() -> None:
    assert is_oom(OutOfMemory("x")) and is_oom(MemoryError())
    assert not is_oom(RuntimeError("other"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(ConfigError, match="--max-model-len"):
        TuneConfig(max_model_lens=(32,), max_tokens=64)
    with pytest.raises(ConfigError, match="--batch-sizes"):
        TuneConfig(batch_sizes=(0,))


def test_table_and_plot(tmp_path: Path) -> None:
    report = tune(_factory(oom_at=4, calls=[]), CFG, model="m", backend="fake")
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(tune_table(report))
    assert "out of memory" in console.export_text()
    png = tune_plot(report, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert report.to_dict()["oom_batch_size"] == 4
