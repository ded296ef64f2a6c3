"""Active health checks against real servers: thresholds, one probe in flight, jitter."""

from __future__ import annotations

import asyncio
import random
from typing import Iterator

import pytest
from faulty_server import FaultyServer

from babeldesk.config import FleetConfig, UpstreamConfig
from babeldesk.fleet import Fleet
from babeldesk.fleet.health import HealthChecker, jittered
from babeldesk.fleet.http import HTTPClient
from babeldesk.telemetry.metrics import Metrics
from tests.clock import eventually


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    s = FaultyServer("a")
    with s.running():
        yield s


async def test_thresholds_take_an_upstream_out_and_back(server: FaultyServer) -> None:
    cfg = FleetConfig(upstreams=(UpstreamConfig(server.url),), health_interval_s=0,
                      unhealthy_threshold=2, healthy_threshold=3, health_timeout_s=0.5)
    metrics = Metrics("gateway")
    fleet = Fleet(cfg, metrics=metrics)
    await fleet.start()
    try:
        (up,) = fleet.pool.upstreams
        server.ready = False
        assert await fleet.health.check(up) is False and up.healthy  # 1 failure: still in
        assert await fleet.health.check(up) is False and not up.healthy
        assert not fleet.ready and fleet.candidates() == []
        assert "503" in up.last_error
        assert f'babeldesk_upstream_healthy{{upstream="{server.url}"}} 0.0' in \
            metrics.render().decode()
        server.ready = True
        for _ in range(2):
            assert await fleet.health.check(up) is True and not up.healthy
        assert await fleet.health.check(up) is True and up.healthy  # 3rd pass
        assert fleet.ready and fleet.admin_snapshot()["upstreams"][0]["healthy"]
    finally:
        await fleet.aclose()


async def test_never_more_than_one_probe_in_flight(server: FaultyServer) -> None:
    server.ready_hang = True
    cfg = FleetConfig(upstreams=(UpstreamConfig(server.url),), health_interval_s=0,
                      health_timeout_s=0.3, unhealthy_threshold=1)
    client = HTTPClient(connect_timeout_s=1, read_timeout_s=5)
    fleet = Fleet(cfg)
    await fleet.refresh()
    checker = HealthChecker(cfg, client)
    (up,) = fleet.pool.upstreams
    results = await asyncio.gather(*(checker.check(up) for _ in range(10)))
    assert results.count(None) == 9 and results.count(False) == 1
    assert server.probes == 1 and server.max_probes_in_flight == 1
    assert not up.healthy and "timed out" in up.last_error
    assert client.connections == (0, 0)  # the timed-out probe's connection was closed
    await client.aclose()
    await fleet.aclose()


async def test_probe_loop_runs_jittered(server: FaultyServer) -> None:
    cfg = FleetConfig(upstreams=(UpstreamConfig(server.url),), health_interval_s=0.05,
                      health_jitter=0.5)
    fleet = Fleet(cfg)
    await fleet.start()
    loops = list(fleet.health._tasks.values())
    try:
        assert await eventually(lambda: server.probes >= 4)
        assert server.max_probes_in_flight == 1
        assert all(not t.done() for t in loops)  # the loops keep probing
        server.ready = False
        # 2 failed probes (the default threshold) take it out
        assert await eventually(lambda: not fleet.pool.upstreams[0].healthy)
    finally:
        await fleet.aclose()
    assert loops and all(t.done() for t in loops)  # stopped with the fleet: no more probes


def test_jitter_stays_in_bounds_and_varies() -> None:
    rng = random.Random(3)
    delays = [jittered(30.0, 0.1, rng) for _ in range(200)]
    assert all(27.0 <= d <= 33.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150
    assert jittered(30.0, 0.0, rng) == 30.0


async def test_a_passing_probe_half_opens_an_open_breaker(server: FaultyServer) -> None:
    cfg = FleetConfig(upstreams=(UpstreamConfig(server.url),), health_interval_s=0,
                      breaker_failures=1, breaker_reset_s=600, breaker_max_reset_s=600)
    fleet = Fleet(cfg)
    await fleet.start()
    try:
        (up,) = fleet.pool.upstreams
        server.mode = "error500"
        await fleet.request({"model": "m", "messages": []})
        assert up.breaker.state.value == "open"
        server.ready = False
        await fleet.health.check(up)
        assert up.breaker.state.value == "open"  # a failing probe changes nothing
        server.ready, server.mode = True, "ok"
        await fleet.health.check(up)
        assert up.breaker.state.value == "half_open"
        assert (await fleet.request({"model": "m", "messages": []})).status == 200
        assert up.breaker.state.value == "closed"
    finally:
        await fleet.aclose()

