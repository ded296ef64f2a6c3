"""Load generator (its SSE parsing is babeldesk.sse, tests/test_sse.py): Poisson arrivals, SLO judging and search,
and the real HTTP client against a port where nothing listens."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading

import numpy as np
import pytest

from babeldesk.bench.loadgen import (
    LoadConfig,
    LoadMode,
    RequestResult,
    RunResult,
    TargetConfig,
    TargetKind,
    make_target,
    poisson_offsets,
    run_load,
)
from babeldesk.bench.slo import Slo, Trial, judge, slo_search
from babeldesk.bench.workload import WorkItem
from babeldesk.errors import ConfigError


def test_poisson_arrivals_have_the_rate() -> None:
    t = poisson_offsets(20_000, rate=50.0, seed=3)
    assert np.all(np.diff(t) > 0)
    assert 20_000 / t[-1] == pytest.approx(50.0, rel=0.03)
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)  # exponential: CV 1


def _run(latencies_ms: list[float | None], wall_s: float, offered: float) -> RunResult:
    rs = [RequestResult(0.0, "200", latency_s=v / 1000, ttft_s=v / 2000) if v is not None
          else RequestResult(0.0, "503", error="down") for v in latencies_ms]
    return RunResult(LoadMode.OPEN, rs, wall_s, offered_rps=offered)


def test_judge_checks_quantile_errors_and_keeping_up() -> None:
    slo = Slo(target_ms=200, quantile=0.99)
    fast = _run([50.0] * 100, wall_s=10, offered=10)
    assert judge(fast, slo).met
    slow_tail = _run([50.0] * 97 + [900.0] * 3, wall_s=10, offered=10)
    assert not judge(slow_tail, slo).met
    assert judge(slow_tail, Slo(target_ms=200, quantile=0.5)).met
    errors = _run([50.0] * 95 + [None] * 5, wall_s=10, offered=10)
    assert not judge(errors, slo).met and judge(errors, slo).error_share == 0.05
    behind = _run([50.0] * 100, wall_s=20, offered=10)  # answered 5/s of 10/s offered
    assert not judge(behind, slo).met
    assert judge(_run([300.0] * 10, 1, 10), Slo(200, metric="ttft")).met  # ttft = 150 ms


async def _search(capacity: float, **kw: float) -> tuple[float | None, list[Trial]]:
    async def run_at(rate: float) -> Trial:
        return Trial(rate, rate, 10.0 if rate <= capacity else 900.0, 0.0, rate <= capacity)

    return await slo_search(run_at, **kw)  # type: ignore[arg-type]


def test_slo_search_doubles_then_bisects() -> None:
    best, trials = asyncio.run(_search(13.0, start_rate=1.0, max_rate=1000, max_trials=20))
    assert best is not None and 13.0 / 1.1 <= best <= 13.0
    rates = [t.rate for t in trials]
    assert rates[:5] == [1, 2, 4, 8, 16]  # doubling until the first failure
    assert all(8 <= r <= 16 for r in rates[5:])  # then only between pass and failure


def test_slo_search_halves_when_the_start_fails_and_respects_bounds() -> None:
    best, trials = asyncio.run(_search(3.0, start_rate=20.0, max_rate=100, max_trials=20))
    assert best is not None and 3.0 / 1.1 <= best <= 3.0
    assert trials[1].rate == 10.0
    best, trials = asyncio.run(_search(1e9, start_rate=1.0, max_rate=4.0, max_trials=20))
    assert best == 4.0 and [t.rate for t in trials] == [1, 2, 4]
    best, trials = asyncio.run(_search(0.0, start_rate=1.0, max_rate=4.0, max_trials=3))
    assert best is None and len(trials) == 3
    with pytest.raises(ConfigError):
        asyncio.run(_search(1.0, start_rate=0.0, max_rate=1.0))


def test_configs_validate() -> None:
    with pytest.raises(ConfigError, match="--url"):
        TargetConfig(TargetKind.SUPPORT, "localhost:8080")
    with pytest.raises(ConfigError, match="--rate"):
        LoadConfig(LoadMode.OPEN, rate=0)
    with pytest.raises(ConfigError, match="--slo-metric"):
        Slo(metric="p99")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens


@pytest.mark.parametrize("mode", [LoadMode.OPEN, LoadMode.CLOSED])
def test_unreachable_server_gives_connect_errors(mode: LoadMode) -> None:
    target = make_target(TargetConfig(TargetKind.SUPPORT, f"http://127.0.0.1:{_dead_port()}",
                                      timeout_s=5))
    seen: list[RequestResult] = []
    run = asyncio.run(run_load(target, [WorkItem("hi", "en")],
                               LoadConfig(mode, requests=5, rate=100, concurrency=2),
                               on_result=seen.append))
    assert len(run.results) == len(seen) == 5
    assert {r.status for r in run.results} == {"connect_error"}
    assert not any(r.ok for r in run.results)


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    """Answers every POST with 200 and a plain-text body."""

    def do_POST(self) -> None:  # the stdlib handler's method name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"hello, I am not babeldesk\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(("stream", "status"), [(False, "bad_response"), (True, "stream_error")])
def test_a_server_that_is_not_the_api_gives_errors(stream: bool, status: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        target = make_target(TargetConfig(TargetKind.SUPPORT, url, stream=stream, timeout_s=5))
        run = asyncio.run(run_load(target, [WorkItem("hi", "en")],
                                   LoadConfig(LoadMode.CLOSED, requests=3, concurrency=1)))
    finally:
        server.shutdown()
        server.server_close()
    assert [r.status for r in run.results] == [status] * 3
