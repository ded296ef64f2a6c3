"""HTTP side of the engine benchmark: serving processes, RSS sampling, the load generator.

One OpenAI-compatible server runs at a time (a babeldesk worker or llama-cpp-python's
server), started as a subprocess on 127.0.0.1 and stopped after its runs. Requests are
streamed chat completions; TTFT is the first non-empty content delta, end-to-end the
``[DONE]`` line, both in seconds from the request's arrival (monotonic clock).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import psutil

import engine_workload as wl

from babeldesk.sse import SseLines, parse_chunk

RUN_DEADLINE_S = 3600.0  # one run never takes longer; unfinished requests count as errors


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout:.0f} s: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RssSampler:
    """Peak resident set size (bytes) of a process and its children, sampled every ``period`` s."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _sample(self) -> int:
        try:
            p = psutil.Process(self.pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for q in procs:
            try:
                total += q.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def engine_means(metrics_text: str) -> dict[str, float]:
    """Means of the worker's histograms (sum / count) from a /metrics scrape: decode batch
    size per step (sequences), inter-token latency and queue wait (seconds)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for fam in text_string_to_metric_families(metrics_text):
        for s in fam.samples:
            if s.name.endswith(("_sum", "_count")):
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    out = {}
    for name, key in (("babeldesk_batch_size", "mean_batch_size"),
                      ("babeldesk_inter_token_latency_seconds", "mean_itl_s"),
                      ("babeldesk_queue_wait_seconds", "mean_queue_wait_s")):
        if sums.get(name + "_count"):
            out[key] = sums[name + "_sum"] / sums[name + "_count"]
    return out


class StreamError(Exception):
    """The server ended the stream with an error event (or sent an unreadable chunk)."""


@dataclass
class HttpTarget:
    base_url: str  # http://127.0.0.1:PORT
    model: str  # the served model name


@dataclass
class RunState:
    start: float = field(default_factory=time.monotonic)  # monotonic seconds
    records: list[dict[str, Any]] = field(default_factory=list)


async def one_request(client: httpx.AsyncClient, target: HttpTarget, req: wl.BenchRequest,
                      arrival: float, state: RunState) -> dict[str, Any]:
    body = {"model": target.model, "messages": req.messages, "max_tokens": wl.MAX_TOKENS,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    rec: dict[str, Any] = {"index": req.index, "language": req.language, "arrival_s": arrival,
                           "ttft_s": None, "e2e_s": None, "completion_tokens": None,
                           "tokens_counted": "usage", "text": "", "error": None}
    parts: list[str] = []
    try:
        async with client.stream("POST", target.base_url + "/v1/chat/completions",
                                 json=body) as resp:
            if resp.status_code != 200:
                rec["error"] = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return rec
            sse = SseLines()
            async for line in resp.aiter_lines():
                event = sse.feed(line)
                if event is None:
                    continue
                chunk = parse_chunk(event.data)
                if chunk.error is not None:
                    raise StreamError(chunk.error)
                if chunk.usage is not None:
                    rec["completion_tokens"] = chunk.usage.completion_tokens
                if chunk.text:
                    if rec["ttft_s"] is None:
                        rec["ttft_s"] = time.monotonic() - state.start - arrival
                    parts.append(chunk.text)
        rec["e2e_s"] = time.monotonic() - state.start - arrival
    except (httpx.HTTPError, StreamError) as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["text"] = "".join(parts)
    if rec["ttft_s"] is None and rec["e2e_s"] is not None:
        rec["ttft_s"] = rec["e2e_s"]  # an empty answer: the first token was EOS
    return rec


async def _drive(target: HttpTarget, reqs: list[wl.BenchRequest], mode: str, rate: float,
                 clients: int, on_done: Callable[[], None]) -> RunState:
    state = RunState()
    limits = httpx.Limits(max_connections=len(reqs) + 8, max_keepalive_connections=64)
    timeout = httpx.Timeout(connect=60.0, read=RUN_DEADLINE_S, write=60.0, pool=RUN_DEADLINE_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def fire(req: wl.BenchRequest, arrival: float) -> None:
            delay = arrival - (time.monotonic() - state.start)
            if delay > 0:
                await asyncio.sleep(delay)
            state.records.append(await one_request(client, target, req, arrival, state))
            on_done()

        async def worker(queue: list[wl.BenchRequest]) -> None:
            while queue:  # closed loop: the next request leaves when the previous returns
                req = queue.pop(0)
                arrival = time.monotonic() - state.start
                state.records.append(await one_request(client, target, req, arrival, state))
                on_done()

        if mode == "burst":
            tasks = [fire(r, 0.0) for r in reqs]
        elif mode == "poisson":
            tasks = [fire(r, a) for r, a in zip(reqs, wl.poisson_arrivals(len(reqs), rate))]
        else:  # closed loop with ``clients`` concurrent clients
            queue = list(reqs)
            tasks = [worker(queue) for _ in range(clients)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), RUN_DEADLINE_S)
        except asyncio.TimeoutError:
            pass  # requests still out are missing from records: counted as errors later
    return state


def run_load(target: HttpTarget, reqs: list[wl.BenchRequest], mode: str, *, rate: float = 0.0,
             clients: int = 1, on_done: Callable[[], None] = lambda: None
             ) -> tuple[list[dict[str, Any]], float]:
    """Send ``reqs`` in ``mode`` (burst | poisson | closed); records and wall seconds."""
    state = asyncio.run(_drive(target, reqs, mode, rate, clients, on_done))
    wall = time.monotonic() - state.start
    seen = {r["index"] for r in state.records}
    for req in reqs:
        if req.index not in seen:
            state.records.append({"index": req.index, "language": req.language,
                                  "arrival_s": None, "ttft_s": None, "e2e_s": None,
                                  "completion_tokens": None, "tokens_counted": None,
                                  "text": "", "error": "run deadline"})
    state.records.sort(key=lambda r: r["index"])
    return state.records, wall
