"""The gateway's OpenAI passthrough (raw ASGI routes) served by uvicorn in front of real
faulty OpenAI servers through a real ``Fleet``: bodies and headers relayed, SSE streamed,
bad input a clear 4xx, metrics by route, API key."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from babeldesk.config import Config, FleetConfig, GatewayConfig, RoutingPolicy, UpstreamConfig
from babeldesk.fleet import Fleet
from babeldesk.gateway.app import GatewayState, create_app
from babeldesk.gateway.passthrough import Passthrough
from babeldesk.telemetry.metrics import Metrics
from babeldesk.edge.lifecycle import Phase
from tests.fleet.faulty_server import FaultyServer, free_port

CHAT = {"model": "faulty", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.contextmanager
def gateway(upstreams: list[FaultyServer], **gw: Any) -> Iterator[tuple[str, GatewayState]]:
    fleet_cfg = FleetConfig(upstreams=tuple(UpstreamConfig(s.url) for s in upstreams),
                            health_interval_s=0, first_byte_timeout_s=2, read_timeout_s=2,
                            policy=RoutingPolicy.SESSION_AFFINITY)
    config = Config(gateway=GatewayConfig(**{"upstream_header": True, **gw}), fleet=fleet_cfg)
    state = GatewayState(config, Metrics("gateway"))
    app = create_app(state)
    fleet = Fleet(fleet_cfg, metrics=state.metrics)
    Passthrough(state, fleet, session_header=fleet_cfg.session_header,
                max_body_bytes=config.gateway.max_body_bytes).install(app)

    @app.on_event("startup")
    async def _start() -> None:
        await fleet.start()
        state.pipeline = object()  # type: ignore[assignment]  # no support API here
        state.phase = Phase.READY

    @app.on_event("shutdown")
    async def _stop() -> None:
        await fleet.aclose()

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "gateway did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", state
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def two() -> Iterator[list[FaultyServer]]:
    a, b = FaultyServer("a"), FaultyServer("b")
    with a.running(), b.running():
        yield [a, b]


def test_completions_and_models_are_relayed(two: list[FaultyServer]) -> None:
    with gateway(two) as (url, state), httpx.Client(base_url=url, timeout=10) as client:
        raw = json.dumps(CHAT, separators=(",", ":"))
        homes = set()
        for _ in range(3):
            r = client.post("/v1/chat/completions", content=raw,
                            headers={"x-session-id": "s-1", "content-type": "application/json"})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            served = r.json()["choices"][0]["message"]["content"].split(":")[0]
            assert r.headers["x-babeldesk-upstream"] == {"a": two[0].url, "b": two[1].url}[served]
            homes.add(served)
        assert len(homes) == 1  # the session stays on its worker
        server = two[0] if homes == {"a"} else two[1]
        assert server.sessions[-3:] == ["s-1"] * 3

        r = client.get("/v1/models")
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "faulty"
        assert int(r.headers["content-length"]) == len(r.content)

        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            assert s.status_code == 200
            assert s.headers["content-type"].startswith("text/event-stream")
            assert s.headers["cache-control"] == "no-cache"
            assert s.headers["x-babeldesk-upstream"] in (two[0].url, two[1].url)
            text = "".join(s.iter_text())
        assert text.endswith("data: [DONE]\n\n") and text.count("data: ") == 10

        scrape = state.metrics.render().decode()
        for route in ("/v1/chat/completions", "/v1/models"):
            assert f'route="{route}",status="200"' in scrape


def test_bad_input_is_a_clear_4xx(two: list[FaultyServer]) -> None:
    with gateway(two, max_body_bytes=1024) as (url, _), \
            httpx.Client(base_url=url, timeout=10) as client:
        cases = [
            (b"{not json", 400, "malformed JSON"),
            (b"[1, 2]", 400, "JSON object"),
            (b"", 400, "empty"),
            (b"\xff\xfe", 400, "UTF-8"),
            (b'{"x": "' + b"a" * 2000 + b'"}', 413, "limit"),
        ]
        for body, status, words in cases:
            r = client.post("/v1/chat/completions", content=body)
            assert r.status_code == status, (body[:20], r.text)
            assert words in r.json()["error"]["message"]
        r = client.post("/v1/chat/completions", json=CHAT, headers={"x-session-id": "a\tb"})
        assert r.status_code == 400 and "x-session-id" in r.json()["error"]["message"]
        r = client.get("/v1/chat/completions")
        assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
        assert sum(s.chat_requests for s in two) == 0  # nothing bad went upstream


def test_an_upstream_429_is_passed_on_with_retry_after(two: list[FaultyServer]) -> None:
    for s in two:
        s.mode = "error429"
    with gateway(two) as (url, _), httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 429 and r.json()["error"]["type"] == "faulty"


def test_no_upstream_answering_is_a_503(two: list[FaultyServer]) -> None:
    for s in two:
        s.mode = "error500"
    with gateway(two) as (url, _), httpx.Client(base_url=url, timeout=10) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 500  # the last upstream's own answer, as it came
        for s in two:
            s.mode = "hang"
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "no upstream answered" in r.json()["error"]["message"]
        assert r.headers["retry-after"]


def test_api_key_guards_the_passthrough(two: list[FaultyServer]) -> None:
    with gateway(two, api_key="sekret") as (url, state), \
            httpx.Client(base_url=url, timeout=10) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            r = client.get("/v1/models", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"]
        r = client.get("/v1/models", headers={"authorization": "Bearer sekret"})
        assert r.status_code == 200
        assert client.get("/health").status_code == 200  # probes need no key
