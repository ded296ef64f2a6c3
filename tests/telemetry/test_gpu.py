"""GPU sampler: the absent path for real (this machine has no GPU), the reading and gauge
setting logic with a fake NVML handle (a GPU cannot be conjured here)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from babeldesk.telemetry.gpu import GpuReading, GpuSampler, apply_readings, read_gpus
from babeldesk.telemetry.metrics import Metrics

GIB = 1024**3


def _samples(metrics: Metrics) -> dict[tuple[str, str], float]:
    """(sample name, gpu label) -> value, for the gpu_* series in the real exposition."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name.startswith("babeldesk_gpu_"):
                out[(s.name, s.labels["gpu"])] = s.value
    return out


class FakeNvmlError(Exception):
    pass


class FakeNvml:
    """Stands in for ``pynvml`` with scripted devices. ``util`` / ``mem`` None -> the
    query raises, as NVML does for unsupported queries (MIG slices)."""

    NVMLError = FakeNvmlError

    def __init__(self, devices: list[dict[str, Any]], *, init_error: bool = False) -> None:
        self.devices = devices
        self.init_error = init_error
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNvmlError("Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialised
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetUtilizationRates(self, handle: dict[str, Any]) -> Any:
        if handle["util"] is None:
            raise FakeNvmlError("Not Supported")
        return SimpleNamespace(gpu=handle["util"], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> Any:
        if handle["mem"] is None:
            raise FakeNvmlError("Not Supported")
        used, total = handle["mem"]
        return SimpleNamespace(used=used, total=total, free=total - used)


def test_real_nvml_gauges_match_the_machine() -> None:
    """The real pynvml: without a GPU / driver, no sampler and no gpu_* series in /metrics;
    with one (a GPU machine), a sample sets the memory gauges of every GPU."""
    metrics = Metrics("worker")
    sampler = GpuSampler.open(metrics)
    if sampler is None:
        assert _samples(metrics) == {}
        assert "babeldesk_gpu_utilization_ratio{" not in metrics.render().decode()
        return
    try:  # pragma: no cover - only on a machine with a GPU
        sampler.sample()
        totals = [v for (name, _), v in _samples(metrics).items()
                  if name == "babeldesk_gpu_memory_total_bytes"]
        assert len(totals) == sampler.gpu_count and all(v > 0 for v in totals)
    finally:
        sampler.close()


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is None, reason="nvidia-ml-py (pynvml; the test extra) not installed")
def test_real_pynvml_reports_library_missing() -> None:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # the failure GpuSampler.open turns into "absent"
        assert GpuSampler.open(Metrics("worker"), pynvml) is None  # type: ignore[arg-type]
        return
    # pragma: no cover - NVML works on this machine: the sampler opens over the real library
    pynvml.nvmlShutdown()
    sampler = GpuSampler.open(Metrics("worker"), pynvml)  # type: ignore[arg-type]
    assert sampler is not None
    sampler.close()


def test_absent_when_module_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    assert GpuSampler.open(Metrics("worker")) is None


def test_absent_when_init_fails_or_no_devices() -> None:
    assert GpuSampler.open(Metrics("w"), FakeNvml([], init_error=True)) is None
    empty = FakeNvml([])
    assert GpuSampler.open(Metrics("w"), empty) is None
    assert empty.shutdowns == 1


def test_read_gpus_converts_units() -> None:
    nvml = FakeNvml([
        {"util": 87, "mem": (30 * GIB, 80 * GIB)},
        {"util": None, "mem": (1 * GIB, 10 * GIB)},  # MIG slice: no utilisation
        {"util": 150, "mem": None},  # out of range percent is clamped
    ])
    nvml.nvmlInit()
    readings = read_gpus(nvml)
    assert readings == [
        GpuReading(0, 0.87, 30 * GIB, 80 * GIB),
        GpuReading(1, None, 1 * GIB, 10 * GIB),
        GpuReading(2, 1.0, None, None),
    ]


def test_sampler_sets_gauges_and_removes_unsupported() -> None:
    metrics = Metrics("worker")
    device = {"util": 40, "mem": (2 * GIB, 16 * GIB)}
    nvml = FakeNvml([device, {"util": None, "mem": (GIB, 8 * GIB)}])
    sampler = GpuSampler.open(metrics, nvml)
    assert sampler is not None and sampler.gpu_count == 2
    sampler.sample()
    assert _samples(metrics) == {
        ("babeldesk_gpu_utilization_ratio", "0"): 0.4,
        ("babeldesk_gpu_memory_used_bytes", "0"): 2 * GIB,
        ("babeldesk_gpu_memory_total_bytes", "0"): 16 * GIB,
        ("babeldesk_gpu_memory_used_bytes", "1"): GIB,
        ("babeldesk_gpu_memory_total_bytes", "1"): 8 * GIB,
    }
    # a query that stops working removes the series instead of leaving a stale value
    device["util"] = None
    device["mem"] = (3 * GIB, 16 * GIB)
    sampler.sample()
    got = _samples(metrics)
    assert ("babeldesk_gpu_utilization_ratio", "0") not in got
    assert got[("babeldesk_gpu_memory_used_bytes", "0")] == 3 * GIB
    sampler.close()
    sampler.close()
    assert nvml.shutdowns == 1


def test_apply_readings_directly() -> None:
    metrics = Metrics("worker")
    apply_readings(metrics, [GpuReading(3, 0.5, 10, 20)])
    assert _samples(metrics)[("babeldesk_gpu_utilization_ratio", "3")] == 0.5


async def test_run_loop_samples_until_cancelled() -> None:
    metrics = Metrics("worker")
    device = {"util": 10, "mem": (1, 2)}
    sampler = GpuSampler.open(metrics, FakeNvml([device]))
    assert sampler is not None
    task = asyncio.create_task(sampler.run(interval_s=0.01))
    for _ in range(200):  # bounded: at most ~2 s
        await asyncio.sleep(0.01)
        if _samples(metrics).get(("babeldesk_gpu_utilization_ratio", "0")) == 0.1:
            break
    device["util"] = 90
    for _ in range(200):
        await asyncio.sleep(0.01)
        if _samples(metrics).get(("babeldesk_gpu_utilization_ratio", "0")) == 0.9:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sampler.close()
    assert _samples(metrics)[("babeldesk_gpu_utilization_ratio", "0")] == 0.9
