"""Open-loop HTTP/1.1 load generator for the serving-rate benchmark.

Requests are *scheduled* at a constant rate (request i at t0 + i / rate) whatever the
server does, and a request's latency runs from its scheduled time to the last byte of
its response (latency correction, as wrk2 and oha --latency-correction do): time a
request waits for a free connection, or for a generator that fell behind, counts.
At most ``connections`` requests are in flight (keep-alive connections, one request
each, no pipelining), as a real client pool would have.

Why not oha (the brief's first choice): ``cargo install oha`` cannot reach crates.io
from here, wrk (Debian) is closed-loop and wrk2 is not packaged. Python clients such as
httpx cost ~0.3 ms a request; this one writes pre-built request bytes on raw asyncio
transports (uvloop) and parses responses with httptools (C), ~30-60 us a request, so
one core drives far more than the ~7,000 requests/s of the ceiling app. It reports its
own CPU use and how far its sends lagged the schedule, so a run where the generator was
the bottleneck is visible (and, by the latency correction, can only look worse).
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

_SOURCE = re.compile(rb'"source"\s*:\s*"([a-z_]+)"')


def post_bytes(host: str, path: str, body: bytes) -> bytes:
    """One keep-alive POST with a JSON body, as raw bytes."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("ascii") + body


@dataclass(frozen=True)
class TrialResult:
    rate: float  # scheduled requests/s
    duration_s: float  # measured window (after warm-up), seconds
    measured: int  # requests scheduled in the measured window
    ok: int  # of those: 2xx responses
    failed: int  # of those: non-2xx, connection errors, or no answer within the timeout
    p50_ms: float
    p90_ms: float
    p99_ms: float  # failed requests count as infinitely slow
    max_ms: float
    achieved_rps: float  # measured responses / measured window
    sources: dict[str, int] = field(default_factory=dict)  # "source" field of replies
    send_lag_p99_ms: float = 0.0  # generator behind its schedule (time the request was
    # handed to a connection or the pool's queue - its scheduled time), all requests
    generator_cpu: float = 0.0  # generator process CPU seconds / wall second (1.0 = a core)
    stopped_early: bool = False  # stopped once the p99 could no longer meet the SLO
    answered: int = 0  # 2xx responses, warm-up included (server CPU is divided by this)

    def meets(self, slo_ms: float) -> bool:
        return self.measured > 0 and self.p99_ms <= slo_ms


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]; inf for an empty list."""
    if not sorted_values:
        return math.inf
    k = max(0, math.ceil(q / 100 * len(sorted_values)) - 1)
    return sorted_values[min(k, len(sorted_values) - 1)]


class _Conn(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current = -1  # index of the request in flight, -1 when idle
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail()

    def on_body(self, body: bytes) -> None:
        if len(self.body) < 4096:
            self.body += body

    def on_message_complete(self) -> None:
        i, self.current = self.current, -1
        status = self.parser.get_status_code()
        found = _SOURCE.search(self.body)
        source = found.group(1).decode() if found else None
        self.body.clear()  # (after reading the match: it points into this buffer)
        self.gen.done(i, 200 <= status < 300, source, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail()
        self.gen.lost(self)

    def _fail(self) -> None:
        if self.current >= 0:
            i, self.current = self.current, -1
            self.gen.done(i, False, None, None)
        if self.transport is not None:
            self.transport.close()

    def send(self, i: int, payload: bytes) -> None:
        self.current = i
        assert self.transport is not None
        self.transport.write(payload)


class _Generator:
    def __init__(self, host: str, port: int, payloads: Sequence[bytes], rate: float,
                 connections: int) -> None:
        self.host, self.port, self.payloads = host, port, payloads
        self.rate, self.connections = rate, connections
        n = len(payloads)
        self.scheduled = [0.0] * n  # monotonic seconds
        self.lag = [math.nan] * n  # seconds the schedule loop reached request i late
        self.latency = [math.inf] * n  # seconds; inf = failed
        self.source: list[str | None] = [None] * n
        self.finished = 0
        self.idle: collections.deque[_Conn] = collections.deque()
        self.waiting: collections.deque[int] = collections.deque()  # scheduled, not yet sent
        self.open = 0
        self.all_done = asyncio.Event()
        self.conns: list[_Conn] = []
        self.first_measured = 0  # requests before this index are warm-up
        self.slow = 0  # measured requests that failed or took longer than slo_s
        self.slo_s = math.inf

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        while self.open < self.connections:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
            self.open += 1
            self.conns.append(conn)
            self.idle.append(conn)

    def _dispatch(self, i: int) -> None:
        while self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None:
                conn.send(i, self.payloads[i])
                return
        self.waiting.append(i)
        if self.open < self.connections:  # a connection was lost: replace it
            self.open += 1
            asyncio.ensure_future(self._reopen())

    async def _reopen(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self), self.host, self.port)
        except OSError:
            self.open -= 1
            return
        self.conns.append(conn)
        self._release(conn)

    def _release(self, conn: _Conn) -> None:
        if self.waiting and conn.transport is not None:
            i = self.waiting.popleft()
            conn.send(i, self.payloads[i])
        elif conn.transport is not None:
            self.idle.append(conn)

    def done(self, i: int, ok: bool, source: str | None, conn: _Conn | None) -> None:
        now = time.monotonic()
        if ok:
            self.latency[i] = now - self.scheduled[i]
        if i >= self.first_measured and self.latency[i] > self.slo_s:
            self.slow += 1
        self.source[i] = source
        self.finished += 1
        if self.finished == len(self.payloads):
            self.all_done.set()
        if conn is not None:
            self._release(conn)

    def lost(self, conn: _Conn) -> None:
        self.open -= 1

    def doomed(self, now: float) -> bool:
        """True once more than 1% of the measured requests are (or will surely be)
        slower than the SLO: the trial's p99 cannot meet it any more."""
        budget = 0.01 * (len(self.payloads) - self.first_measured)
        late = self.slow
        for i in self.waiting:  # oldest first
            if now - self.scheduled[i] <= self.slo_s:
                break
            late += i >= self.first_measured
        return late > budget

    async def run(self, timeout_s: float) -> bool:
        """Send every payload on schedule; False when stopped early (``doomed``)."""
        await self.connect()
        t0 = time.monotonic() + 0.05
        n = len(self.payloads)
        for i in range(n):
            self.scheduled[i] = t0 + i / self.rate
        i = 0
        checked = t0
        while i < n:
            now = time.monotonic()
            if now - checked > 0.1:
                checked = now
                if self.doomed(now):
                    self._stop()
                    return False
            while i < n and self.scheduled[i] <= now:
                self.lag[i] = now - self.scheduled[i]
                self._dispatch(i)
                i += 1
            if i < n:
                # sleep to the next slot; at high rates this wakes every ~1 ms and sends
                # every request that became due meanwhile (their latency still runs
                # from their own scheduled time)
                await asyncio.sleep(max(0.0, self.scheduled[i] - time.monotonic()))
        try:
            await asyncio.wait_for(self.all_done.wait(), timeout_s)
        except TimeoutError:
            pass
        self._stop()
        return True

    def _stop(self) -> None:
        """Drop what was not sent, close every connection (what is in flight fails)."""
        self.waiting.clear()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.close()


async def run_trial(host: str, port: int, path: str, bodies: Sequence[bytes], rate: float,
                    duration_s: float, warmup_s: float = 1.0, connections: int = 64,
                    timeout_s: float = 10.0, slo_ms: float | None = None) -> TrialResult:
    """``rate`` requests/s for ``warmup_s + duration_s`` seconds; statistics cover the
    requests scheduled after the warm-up. ``bodies`` are used in order, cycled. With
    ``slo_ms`` the trial stops as soon as its p99 can no longer be <= slo_ms (what was
    not answered then counts as failed)."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be > 0")
    total = max(1, round(rate * (warmup_s + duration_s)))
    payloads = [post_bytes(host, path, bodies[i % len(bodies)]) for i in range(total)]
    gen = _Generator(host, port, payloads, rate, connections)
    first = gen.first_measured = min(total - 1, round(rate * warmup_s))
    if slo_ms is not None:
        gen.slo_s = slo_ms / 1000
    cpu0, wall0 = _cpu_s(), time.monotonic()
    completed = await gen.run(timeout_s)
    cpu = (_cpu_s() - cpu0) / max(1e-9, time.monotonic() - wall0)
    await asyncio.sleep(0.05)  # let the closed connections' callbacks run
    measured = range(first, total)
    lat = sorted(gen.latency[i] * 1000 for i in measured)  # ms, inf = failed
    ok = sum(1 for v in lat if v != math.inf)
    ends = [gen.scheduled[i] + gen.latency[i] for i in measured if gen.latency[i] != math.inf]
    window = (max(ends) - gen.scheduled[first]) if ends else 0.0
    lags = sorted(gen.lag[i] * 1000 for i in range(total) if not math.isnan(gen.lag[i]))
    sources = collections.Counter(gen.source[i] or "none" for i in measured)
    return TrialResult(
        rate=rate, duration_s=duration_s, measured=len(lat), ok=ok, failed=len(lat) - ok,
        p50_ms=percentile(lat, 50), p90_ms=percentile(lat, 90), p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else math.inf,
        achieved_rps=ok / window if window > 0 else 0.0,
        sources=dict(sources), send_lag_p99_ms=percentile(lags, 99), generator_cpu=cpu,
        stopped_early=not completed,
        answered=sum(1 for v in gen.latency if v != math.inf))


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
