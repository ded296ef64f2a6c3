"""``babeldesk tune``: find the batch size a machine should run, on the real engine.

For each point (max batch size B, max_model_len L) an engine is loaded in this process,
B concurrent clients each send ``requests_per_slot`` generations back to back (closed
loop, greedy, ``max_tokens`` new tokens), and the point records generated tokens/s,
requests/s, p99 request latency and TTFT, and peak memory (process RSS on CPU, peak
allocated CUDA memory on a GPU). Batch sizes double from 1 until a point runs out of
memory, would exceed the memory cap, or reaches ``max_batch``; then the gap between the
two best points is refined. The recommendation is the point with the highest tokens/s
whose p99 latency meets the SLO. Each extra max_model_len is then measured at the
recommended batch size.

The engine comes from a factory the caller passes in (the CLI wires the real one):
``bench`` imports only the core, never ``engine``. Out of memory is survived and reported:
the project's ``OutOfMemory``, ``MemoryError`` and ``torch.cuda.OutOfMemoryError`` at load,
and a run where the engine had to split its batch (it lowers its limit after an OOM step).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import psutil

from babeldesk.bench.workload import builtin_workload
from babeldesk.errors import BabeldeskError, ConfigError, OutOfMemory
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams, TextDelta

SYSTEM = "You are the customer-support assistant of an online shop. Answer briefly and politely."


class TuneEngine(Protocol):
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[TextDelta]: ...


@dataclass
class EngineHandle:
    """A started engine for one point, and what tune needs to know about it."""

    engine: TuneEngine
    close: Callable[[], None]  # stop the engine thread and free the model
    batch_limit: Callable[[], int]  # the batch limit in force now (lowered after an OOM)
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    memory_estimate_bytes: int = 0  # weights + KV of every slot at max_model_len


# (batch size, max_model_len) -> a started engine. Raises on load failure (OOM included).
EngineFactory = Callable[[int, int], EngineHandle]
# (batch size, max_model_len) -> estimated bytes, checked against the cap before loading
MemoryEstimate = Callable[[int, int], int]


@dataclass(frozen=True)
class TuneConfig:
    batch_sizes: tuple[int, ...] = ()  # explicit list; () = double from 1
    max_batch: int = 256  # doubling stops here
    max_model_lens: tuple[int, ...] = (2048,)  # the first is swept; the rest at the best batch
    memory_cap_mb: int = 0  # stop at points whose (estimated or measured) peak exceeds it; 0 = off
    requests_per_slot: int = 2  # each of the B clients sends this many requests
    max_tokens: int = 64  # new tokens per request (greedy; EOS may end one earlier)
    slo_p99_ms: float = 5000.0  # request latency SLO for the recommendation
    refine: bool = True
    point_timeout_s: float = 600.0  # a point taking longer is stopped and reported

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.batch_sizes):
            raise ConfigError("--batch-sizes", "every batch size must be >= 1")
        if self.max_batch < 1:
            raise ConfigError("--max-batch", "must be >= 1")
        if not self.max_model_lens or any(n < self.max_tokens + 16 for n in self.max_model_lens):
            raise ConfigError("--max-model-len", f"each must be >= max_tokens + 16 "
                              f"({self.max_tokens + 16})")
        if self.memory_cap_mb < 0:
            raise ConfigError("--memory-cap-mb", "must be >= 0")
        if self.requests_per_slot < 1:
            raise ConfigError("--requests-per-slot", "must be >= 1")
        if self.max_tokens < 1:
            raise ConfigError("--max-tokens", "must be >= 1")
        if self.slo_p99_ms <= 0:
            raise ConfigError("--slo-p99-ms", "must be > 0")
        if self.point_timeout_s <= 0:
            raise ConfigError("--point-timeout", "must be > 0")


@dataclass
class TunePoint:
    batch_size: int
    max_model_len: int
    tokens_per_s: float = 0.0  # generated tokens / wall seconds, all sequences
    requests_per_s: float = 0.0
    p50_ms: float = 0.0  # request latency (submit to last token)
    p99_ms: float = 0.0
    ttft_p99_ms: float = 0.0
    peak_memory_bytes: int = 0  # RSS (CPU) or peak allocated (CUDA) during the point
    memory_estimate_bytes: int = 0
    requests: int = 0
    errors: int = 0
    wall_s: float = 0.0
    oom: bool = False  # out of memory, or over the memory cap
    note: str = ""
    meets_slo: bool = False
    device: str = ""  # where the engine ran ("" when it never loaded)
    loadavg_1m: float = 0.0  # the machine's 1-minute load average when the point ended


@dataclass
class TuneReport:
    model: str
    backend: str
    device: str
    max_tokens: int
    slo_p99_ms: float
    points: list[TunePoint] = field(default_factory=list)
    recommended: TunePoint | None = None
    oom_batch_size: int | None = None  # first batch size that ran out of memory / over cap

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {"model": self.model, "backend": self.backend, "device": self.device,
                "max_tokens": self.max_tokens, "slo_p99_ms": self.slo_p99_ms,
                "recommended_batch_size": rec.batch_size if rec else None,
                "recommended": asdict(rec) if rec else None,
                "oom_batch_size": self.oom_batch_size,
                "points": [asdict(p) for p in self.points]}


def is_oom(exc: BaseException) -> bool:
    """The project's OutOfMemory, Python's MemoryError, torch's CUDA OOM (checked without
    importing torch: if torch is not loaded, nothing raised can be its error)."""
    if isinstance(exc, (OutOfMemory, MemoryError)):
        return True
    if isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                          or "can't allocate memory" in str(exc)):
        return True  # CPU allocator failures and older torch CUDA errors
    torch = sys.modules.get("torch")
    oom_type = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom_type is not None and isinstance(exc, oom_type)


class MemoryProbe:
    """Peak memory over a span: CUDA's peak allocated bytes on a GPU, else this process's
    RSS sampled every ``period_s`` seconds by a thread."""

    def __init__(self, device: str = "cpu", period_s: float = 0.05) -> None:
        self.device, self.period_s = device, period_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.peak = 0
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self._stop.clear()
        proc = psutil.Process()

        def sample() -> None:
            while True:
                self.peak = max(self.peak, proc.memory_info().rss)
                if self._stop.wait(self.period_s):
                    return

        self._thread = threading.Thread(target=sample, name="tune-rss", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        if self.device.startswith("cuda"):
            import torch

            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.peak


def tune_prompts(n: int, seed: int = 0) -> list[list[ChatMessage]]:
    """Support-style chats for the sweep: the built-in workload's messages (free-form
    questions weighted up so answers run long) under a short system prompt."""
    from babeldesk.bench.workload import Mix

    items = builtin_workload(n, Mix(free_form_share=0.5), seed=seed)
    return [[ChatMessage("system", SYSTEM), ChatMessage("user", it.message)] for it in items]


async def _measure(engine: TuneEngine, batch: int, config: TuneConfig,
                   prompts: Sequence[list[ChatMessage]]) -> dict[str, Any]:
    """``batch`` clients, ``requests_per_slot`` requests each; latencies in seconds."""
    params = SamplingParams(max_tokens=config.max_tokens, temperature=0.0)
    lat: list[float] = []
    ttft: list[float] = []
    tokens = 0
    errors: list[str] = []
    it = iter(range(batch * config.requests_per_slot))

    async def one(i: int) -> None:
        nonlocal tokens
        start = time.perf_counter()
        first: float | None = None
        async for d in engine.stream_chat(ChatRequest(prompts[i % len(prompts)], params)):
            if first is None and (d.text or d.finish_reason):
                first = time.perf_counter()
            if d.finish_reason is not None:
                if d.finish_reason == "error":
                    errors.append(d.error or "error")
                    return
                tokens += d.usage.completion_tokens if d.usage else 0
        end = time.perf_counter()
        lat.append(end - start)
        ttft.append((first or end) - start)

    async def client() -> None:
        for i in it:
            await one(i)

    await one(0)  # warm-up: first-call costs (threads, allocations) out of the numbers
    lat.clear()
    ttft.clear()
    errors.clear()
    tokens = 0
    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(batch))),
                           config.point_timeout_s)
    return {"wall": time.perf_counter() - t0, "lat": lat, "ttft": ttft, "tokens": tokens,
            "errors": errors}


def run_point(factory: EngineFactory, batch: int, max_len: int, config: TuneConfig,
              prompts: Sequence[list[ChatMessage]], estimate: MemoryEstimate | None = None,
              probe_device: str | None = None) -> TunePoint:
    """Load, measure, free one point. Out of memory (at load or while running) and the
    memory cap end the point with ``oom=True`` instead of raising."""
    point = TunePoint(batch, max_len)
    cap = config.memory_cap_mb * 2**20
    if estimate is not None:
        point.memory_estimate_bytes = estimate(batch, max_len)
        if cap and point.memory_estimate_bytes > cap:
            point.oom, point.note = True, "over memory cap (estimate), not loaded"
            return point
    probe = MemoryProbe(probe_device or "cpu")
    handle: EngineHandle | None = None
    probe.start()
    try:
        handle = factory(batch, max_len)
        if probe_device is None and handle.device != "cpu":  # learnt only after loading
            probe.stop()
            probe = MemoryProbe(handle.device)
            probe.start()
        point.memory_estimate_bytes = point.memory_estimate_bytes or handle.memory_estimate_bytes
        point.device = handle.device
        m = asyncio.run(_measure(handle.engine, batch, config, prompts))
        if handle.batch_limit() < batch:
            point.oom = True
            point.note = ("out of memory while running: the engine split its batch to "
                          f"{handle.batch_limit()}")
    except TimeoutError:
        point.note = f"stopped after {config.point_timeout_s:g} s"
        point.errors = batch * config.requests_per_slot
        return point
    except BaseException as exc:  # OOM is a result; anything else re-raises
        if not is_oom(exc):
            raise
        point.oom = True
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        point.note = f"out of memory: {first}"
        return point
    finally:
        point.peak_memory_bytes = probe.stop()
        point.loadavg_1m = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0
        if handle is not None:
            handle.close()
        del handle
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    oom_errors = [e for e in m["errors"] if "out of memory" in e]
    if oom_errors:
        point.oom, point.note = True, f"out of memory: {oom_errors[0][:120]}"
    if cap and point.peak_memory_bytes > cap and not point.oom:
        point.oom, point.note = True, "peak memory over the cap"
    point.wall_s = m["wall"]
    point.requests = len(m["lat"])
    point.errors = len(m["errors"])
    if m["lat"]:
        lat = np.asarray(m["lat"]) * 1000
        point.p50_ms = float(np.quantile(lat, 0.5))
        point.p99_ms = float(np.quantile(lat, 0.99))
        point.ttft_p99_ms = float(np.quantile(np.asarray(m["ttft"]) * 1000, 0.99))
    point.tokens_per_s = m["tokens"] / m["wall"] if m["wall"] > 0 else 0.0
    point.requests_per_s = point.requests / m["wall"] if m["wall"] > 0 else 0.0
    point.meets_slo = (not point.oom and point.requests > 0 and point.errors == 0
                       and point.p99_ms <= config.slo_p99_ms)
    return point


def next_batches(points: Sequence[TunePoint]) -> list[int]:
    """Refinement: the midpoint between the two best (by tokens/s) measured batch sizes,
    if they are more than one apart and the midpoint is new."""
    ran = sorted((p for p in points if not p.oom and p.requests), key=lambda p: -p.tokens_per_s)
    if len(ran) < 2:
        return []
    a, b = sorted((ran[0].batch_size, ran[1].batch_size))
    mid = (a + b) // 2
    seen = {p.batch_size for p in points}
    return [mid] if b - a > 1 and mid not in seen else []


def recommend(points: Sequence[TunePoint], max_len: int) -> TunePoint | None:
    ok = [p for p in points if p.max_model_len == max_len and p.meets_slo]
    return max(ok, key=lambda p: (p.tokens_per_s, -p.batch_size)) if ok else None


def tune(factory: EngineFactory, config: TuneConfig, *, model: str, backend: str,
         device: str = "cpu", estimate: MemoryEstimate | None = None,
         on_point: Callable[[TunePoint], None] | None = None) -> TuneReport:
    """The sweep (see the module doc)."""
    report = TuneReport(model, backend, device, config.max_tokens, config.slo_p99_ms)
    prompts = tune_prompts(64)
    probe_device = device if device.startswith("cuda") else None

    def measure(batch: int, max_len: int) -> TunePoint:
        p = run_point(factory, batch, max_len, config, prompts, estimate, probe_device)
        report.points.append(p)
        if p.device and report.device == "auto":
            report.device = p.device
        if p.oom and (report.oom_batch_size is None or batch < report.oom_batch_size) \
                and max_len == config.max_model_lens[0]:
            report.oom_batch_size = batch
        if on_point is not None:
            on_point(p)
        return p

    length = config.max_model_lens[0]
    if config.batch_sizes:
        for b in config.batch_sizes:
            measure(b, length)
    else:
        b = 1
        while b <= config.max_batch:
            if measure(b, length).oom:
                break
            b *= 2
        if config.refine:
            for mid in next_batches(report.points):
                measure(mid, length)
    report.recommended = recommend(report.points, length)
    best = report.recommended or max(
        (p for p in report.points if not p.oom and p.requests), key=lambda p: p.tokens_per_s,
        default=None)
    if best is not None:
        for extra in config.max_model_lens[1:]:
            measure(best.batch_size, extra)
    return report


def describe_failure(exc: BaseException) -> str:
    return exc.message if isinstance(exc, BabeldeskError) else f"{type(exc).__name__}: {exc}"
