"""GPU utilisation and memory through NVML, into the ``babeldesk_gpu_*`` gauges.

NVIDIA's DCGM exporter is the authoritative GPU source in Kubernetes; this sampler is for
machines without it. It uses ``nvidia-ml-py`` (module ``pynvml``, the optional ``gpu``
extra). With no module, no driver library or no GPU, ``GpuSampler.open`` returns ``None``
and the gauges stay absent from ``/metrics``: a missing reading is never faked as 0.

The reading logic takes the NVML module as a parameter (``NvmlApi``), so it is tested with
a fake handle on machines without a GPU, and with the real module for the absent path.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Protocol

from babeldesk.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class NvmlApi(Protocol):
    """The subset of ``pynvml`` used here (the module itself satisfies it)."""

    NVMLError: type[Exception]

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...  # .gpu: percent 0..100
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # .used, .total: bytes


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant. ``None`` where NVML does not support the query (MIG
    slices report no utilisation, for example): the gauge is then left unset."""

    index: int
    utilization_ratio: float | None  # 0..1
    memory_used_bytes: int | None
    memory_total_bytes: int | None

    @property
    def label(self) -> str:
        # same as the DCGM exporter's `gpu` label: the device index
        return str(self.index)


def read_gpus(nvml: NvmlApi) -> list[GpuReading]:
    """Query every GPU NVML sees. NVML must be initialised. Per-query NVML errors give
    ``None`` for that field; an error listing the devices propagates."""
    readings = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        util: float | None = None
        used: int | None = None
        total: int | None = None
        try:
            percent = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            util = min(max(percent / 100.0, 0.0), 1.0)
        except nvml.NVMLError as exc:
            log.debug("gpu %d: no utilisation: %s", index, exc)
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = int(mem.used), int(mem.total)
        except nvml.NVMLError as exc:
            log.debug("gpu %d: no memory info: %s", index, exc)
        readings.append(GpuReading(index, util, used, total))
    return readings


def apply_readings(metrics: Metrics, readings: list[GpuReading]) -> None:
    """Set the gpu_* gauges from ``readings``; a ``None`` field removes that series so a
    stale value never lingers."""
    for r in readings:
        for gauge, value in (
            (metrics.gpu_utilization_ratio, r.utilization_ratio),
            (metrics.gpu_memory_used_bytes, r.memory_used_bytes),
            (metrics.gpu_memory_total_bytes, r.memory_total_bytes),
        ):
            if value is None:
                gauge.remove(r.label)  # no-op when the series does not exist
            else:
                gauge.labels(gpu=r.label).set(value)


class GpuSampler:
    """Samples NVML into a ``Metrics`` object. Build it with ``open``; ``close`` when done."""

    def __init__(self, metrics: Metrics, nvml: NvmlApi, gpu_count: int) -> None:
        self.metrics = metrics
        self.nvml = nvml
        self.gpu_count = gpu_count
        self._closed = False

    @classmethod
    def open(cls, metrics: Metrics, nvml: NvmlApi | None = None) -> GpuSampler | None:
        """A sampler, or ``None`` when there is nothing real to sample: ``pynvml`` not
        installed, no NVIDIA driver library, or zero GPUs. ``nvml`` defaults to ``pynvml``."""
        if nvml is None:
            try:
                import pynvml
            except ImportError:
                log.info("GPU metrics off: nvidia-ml-py not installed (extra `gpu`)")
                return None
            nvml = pynvml  # type: ignore[assignment]
        assert nvml is not None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            log.info("GPU metrics off: NVML unavailable: %s", exc)
            return None
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.info("GPU metrics off: NVML lists no devices: %s", exc)
            nvml.nvmlShutdown()
            return None
        if count == 0:
            log.info("GPU metrics off: NVML sees no GPU")
            nvml.nvmlShutdown()
            return None
        return cls(metrics, nvml, count)

    def sample(self) -> list[GpuReading]:
        """Read every GPU now and set the gauges. Seconds-scale cost: call it every few s."""
        readings = read_gpus(self.nvml)
        apply_readings(self.metrics, readings)
        return readings

    async def run(self, interval_s: float = 5.0) -> None:
        """Sample every ``interval_s`` seconds until cancelled; NVML calls run in a thread
        so a slow driver never blocks the event loop."""
        while not self._closed:
            try:
                await asyncio.to_thread(self.sample)
            except self.nvml.NVMLError as exc:
                log.warning("GPU sampling failed: %s", exc)
            await asyncio.sleep(interval_s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass


def start_gpu_sampler(metrics: Metrics, interval_s: float = 5.0) -> asyncio.Task[None] | None:
    """From a running event loop: sample NVML every ``interval_s`` into ``metrics``, or do
    nothing (gauges absent) when there is no GPU to sample."""
    sampler = GpuSampler.open(metrics)
    if sampler is None:
        return None
    return asyncio.get_running_loop().create_task(sampler.run(interval_s), name="gpu-sampler")
