"""benchmarks/serving_rate.py at tiny scale: the open-loop generator against the real
ceiling app (uvicorn) and against a real slow server, the message stream, and the whole
script for the ceiling target (JSON + PNG). No oha, no model."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import serving_rate
import serving_rate_load as load
import serving_rate_messages as msgs


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert load.percentile(values, 99) == 99.0 and load.percentile(values, 50) == 50.0
    assert load.percentile([], 99) == float("inf")


def test_messages_are_distinct_and_multilingual() -> None:
    skeletons = msgs.skeletons()
    assert len({s.language for s in skeletons}) >= 6 and len({s.intent for s in skeletons}) >= 8
    assert all("{n}" in s.pattern for s in skeletons)
    stream = list(zip(range(5000), msgs.stream(skeletons, seed=3)))
    texts = [t for _, t in stream]
    assert len(set(texts)) == len(texts)  # never the same message twice
    assert texts[:50] == [t for _, t in zip(range(50), msgs.stream(skeletons, seed=3))]
    assert json.loads(msgs.body(texts[0])) == {"message": texts[0]}
    assert msgs._lower_first("¿Dónde?") == "¿dónde?"


@pytest.fixture()
def ceiling() -> Iterator[int]:
    port = serving_rate.free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "ceiling_app.py"), "--port", str(port)])
    server = serving_rate.Server("ceiling", [], port, proc)
    try:
        serving_rate.wait_ready(server, 30)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_generator_against_the_ceiling_app(ceiling: int) -> None:
    body = msgs.body("Where is my order?")
    result = asyncio.run(load.run_trial("127.0.0.1", ceiling, serving_rate.PATH, [body],
                                        rate=100, duration_s=1.0, warmup_s=0.2,
                                        connections=4))
    assert result.measured == 100 and result.ok == 100 and result.failed == 0
    assert result.sources == {"knowledge_base": 100}
    assert 0 < result.p50_ms <= result.p99_ms <= result.max_ms
    assert result.answered == 120 and not result.stopped_early


class _Slow(asyncio.Protocol):
    """HTTP/1.1 server that answers every request after 60 ms."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in range(data.count(b"\r\n\r\n")):
            asyncio.get_running_loop().call_later(0.06, self.transport.write,  # type: ignore[attr-defined]
                                                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


def test_a_trial_that_cannot_meet_the_slo_stops_early() -> None:
    async def main() -> load.TrialResult:
        server = await asyncio.get_running_loop().create_server(_Slow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await load.run_trial("127.0.0.1", port, "/", [b"{}"], rate=50,
                                        duration_s=5.0, warmup_s=0.1, connections=2,
                                        slo_ms=20)
        finally:
            server.close()

    result = asyncio.run(main())
    assert result.stopped_early and not result.meets(20)
    assert result.p99_ms > 20
    assert result.ok < result.measured // 2, result  # the rest was never sent


@pytest.mark.slow
def test_script_ceiling_only(tmp_path: Path) -> None:
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "serving_rate.py"), "--targets", "ceiling", "--no-pin",
         "--duration", "0.5", "--warmup", "0.2", "--max-trials", "2", "--pause", "0",
         "--wrk-seconds", "1",
         "--out", str(out), "--png", str(png)],
        check=False, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    (row,) = data["summary"]
    assert row["target"] == "ceiling" and len(data["trials"]["ceiling"]) == 2
    assert row["max_rate_at_slo"] in (0, 500, 1000, 2000)  # doubling or halving from 1000
    assert png.stat().st_size > 10_000
    if shutil.which("wrk"):  # the optional closed-loop cross-check
        assert data["wrk_closed_loop"]["ceiling"]["non_2xx"] == 0
        assert data["wrk_closed_loop"]["ceiling"]["requests"] > 0
    assert "| ceiling |" in proc.stdout
