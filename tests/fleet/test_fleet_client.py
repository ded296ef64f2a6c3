"""Every failure path of the fleet client against real faulty HTTP servers."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Iterator

import pytest
from faulty_server import FaultyServer

from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig
from babeldesk.errors import Unavailable
from babeldesk.fleet import BreakerState, Fleet, FleetChatModel
from babeldesk.sse import EventSplitter, event_data, parse_chunk
from babeldesk.telemetry.metrics import Metrics
from babeldesk.types import ChatMessage, ChatRequest, collect
from tests.clock import Clock

CHAT = {"model": "faulty", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def servers() -> Iterator[list[FaultyServer]]:
    a, b, c = FaultyServer("a"), FaultyServer("b"), FaultyServer("c")
    with a.running(), b.running(), c.running():
        yield [a, b, c]


def config(servers: list[FaultyServer], **kw: object) -> FleetConfig:
    base: dict[str, object] = dict(
        upstreams=tuple(UpstreamConfig(s.url) for s in servers), health_interval_s=0,
        first_byte_timeout_s=0.5, read_timeout_s=2, breaker_failures=5,
        policy=RoutingPolicy.WEIGHTED_ROUND_ROBIN, retry_budget_min=100)
    base.update(kw)
    return FleetConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
async def make_fleet() -> AsyncIterator[object]:
    made: list[Fleet] = []

    async def make(cfg: FleetConfig, metrics: Metrics | None = None,
                   clock: Clock | None = None) -> Fleet:
        f = Fleet(cfg, metrics=metrics, clock=clock or Clock())
        await f.start()
        made.append(f)
        return f

    yield make
    for f in made:
        await f.aclose()


def served_by(body: bytes | None) -> str:
    return json.loads(body or b"")["choices"][0]["message"]["content"].split(":")[0]


async def read_stream(reply: object) -> tuple[str, list[str], bool]:
    """(text, errors, saw [DONE]) of a streamed reply."""
    text, errors, done = "", [], False
    async for ev in reply.stream:  # type: ignore[attr-defined]
        assert ev.endswith(b"\n\n")  # whole events only
        for e in EventSplitter().feed(ev):
            c = parse_chunk(event_data(e) or "")
            text += c.text
            done = done or c.done
            if c.error:
                errors.append(c.error)
    return text, errors, done


async def test_hang_times_out_and_is_retried_elsewhere(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode = "hang"
    metrics = Metrics("gateway")
    fleet = await make_fleet(config(servers), metrics)
    for stream in (False, True, False, True):
        reply = await fleet.request({**CHAT, "stream": stream})
        assert reply.status == 200
        if stream:
            text, errors, done = await read_stream(reply)
            assert text.split(":")[0] in ("b", "c") and not errors and done
        else:
            assert served_by(reply.body) in ("b", "c")
    hung = fleet.pool.get(a.url)
    assert hung is not None and hung.outcomes["timeout"] >= 1
    assert hung.breaker.consecutive_failures == hung.outcomes["timeout"]
    scrape = metrics.render().decode()
    assert f'babeldesk_upstream_requests_total{{outcome="timeout",upstream="{a.url}"}}' in scrape


async def test_500s_open_the_breaker_and_the_client_never_sees_them(servers, make_fleet):
    a, b, c = servers
    a.mode = "error500"
    metrics = Metrics("gateway")
    fleet = await make_fleet(config(servers), metrics)
    for _ in range(20):
        reply = await fleet.request(CHAT)
        assert reply.status == 200 and served_by(reply.body) in ("b", "c")
    up = fleet.pool.get(a.url)
    assert up is not None and up.breaker.state is BreakerState.OPEN
    assert a.chat_requests == 5  # opened after exactly 5 failures; rejected at once since
    assert up.outcomes["server_error"] == 5
    scrape = metrics.render().decode()
    assert f'babeldesk_upstream_state{{upstream="{a.url}"}} 2.0' in scrape
    assert f'babeldesk_upstream_state{{upstream="{b.url}"}} 0.0' in scrape
    snap = fleet.admin_snapshot()
    row = next(u for u in snap["upstreams"] if u["name"] == a.url)
    assert row["state"] == "open" and not row["usable"] and row["half_open_in_s"] > 0
    assert snap["usable"] == 2


async def test_4xx_is_returned_as_is_and_not_counted(servers, make_fleet) -> None:
    for s in servers:
        s.mode = "error400"
    fleet = await make_fleet(config(servers, breaker_failures=2))
    for _ in range(6):
        reply = await fleet.request(CHAT)
        assert reply.status == 400 and b"error400" in (reply.body or b"")
    assert sum(s.chat_requests for s in servers) == 6  # not retried
    for up in fleet.pool.upstreams:
        assert up.breaker.state is BreakerState.CLOSED and up.breaker.consecutive_failures == 0
        assert set(up.outcomes) <= {"client_error"}


async def test_429_is_retried_elsewhere_without_counting(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode = "error429"
    fleet = await make_fleet(config(servers, breaker_failures=1))
    for _ in range(6):
        reply = await fleet.request(CHAT)
        assert reply.status == 200
    up = fleet.pool.get(a.url)
    assert up is not None and up.outcomes["rate_limited"] >= 1
    assert up.breaker.state is BreakerState.CLOSED


async def test_mid_stream_drop_ends_with_an_error_event_and_no_duplicate(servers, make_fleet):
    a, b, c = servers
    a.mode = "drop"
    fleet = await make_fleet(config(servers, policy=RoutingPolicy.SESSION_AFFINITY))
    session = next(f"s{i}" for i in range(100)
                   if fleet.candidates(f"s{i}")[0].name == a.url)
    reply = await fleet.request({**CHAT, "stream": True}, session_id=session)
    assert reply.upstream == a.url
    text, errors, done = await read_stream(reply)
    assert text == "a: w0"  # what arrived before the drop, once
    assert len(errors) == 1 and "incomplete" in errors[0] and not done
    assert b.chat_requests == 0 and c.chat_requests == 0  # never replayed elsewhere
    up = fleet.pool.get(a.url)
    assert up is not None and up.outcomes["broken_stream"] == 1
    assert up.breaker.consecutive_failures == 1 and up.outstanding == 0
    # the ChatModel face: the text so far, then a final delta with finish_reason "error"
    model = FleetChatModel(fleet, "faulty")
    deltas = [d async for d in model.stream_chat(
        ChatRequest([ChatMessage("user", "hi")]), session_id=session)]
    assert "".join(d.text for d in deltas) == "a: w0"
    assert deltas[-1].finish_reason == "error" and deltas[-1].error


async def test_slow_upstream(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode, a.delay_s = "slow", 0.1
    fleet = await make_fleet(config([a], read_timeout_s=1))
    model = FleetChatModel(fleet, "faulty")
    done = await collect(model.stream_chat(ChatRequest([ChatMessage("user", "hi")])))
    assert done.text == "a: w0 w1 w2 w3 w4" and done.finish_reason == "stop"
    assert done.usage.completion_tokens == 6
    # slower than the read timeout between chunks: the stream is ended with an error
    a.delay_s = 0.3
    slow = await make_fleet(config([a], read_timeout_s=0.15, first_byte_timeout_s=2))
    reply = await slow.request({**CHAT, "stream": True})
    text, errors, done_seen = await read_stream(reply)
    assert errors and "ReadTimeout" in errors[0] and not done_seen


async def test_first_byte_timeout_covers_a_slow_first_event(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode, a.delay_s = "slow", 1.0  # headers at once, first content chunk after 1 s
    a.words = 1
    fleet = await make_fleet(config([a, b], first_byte_timeout_s=0.5,
                                    policy=RoutingPolicy.SESSION_AFFINITY))
    session = next(f"s{i}" for i in range(100) if fleet.candidates(f"s{i}")[0].name == a.url)
    reply = await fleet.request({**CHAT, "stream": True}, session_id=session)
    text, errors, _ = await read_stream(reply)
    # the role chunk came at once, so a was committed; its slow words still arrive
    assert reply.upstream == a.url and text == "a: w0" and not errors


async def test_nobody_answers_gives_unavailable(servers, make_fleet) -> None:
    for s in servers:
        s.mode = "hang"
    fleet = await make_fleet(config(servers, first_byte_timeout_s=0.2, retry_attempts=2))
    with pytest.raises(Unavailable, match="no upstream answered"):
        await fleet.request(CHAT)
    assert sum(s.chat_requests for s in servers) == 2  # bounded attempts


async def test_5xx_everywhere_returns_the_last_answer(servers, make_fleet) -> None:
    for s in servers:
        s.mode = "error500"
    fleet = await make_fleet(config(servers))
    reply = await fleet.request(CHAT)
    assert reply.status == 500 and sum(s.chat_requests for s in servers) == 3


async def test_retry_deadline_and_budget(servers, make_fleet) -> None:
    for s in servers:
        s.mode = "hang"
    fleet = await make_fleet(config(servers, first_byte_timeout_s=0.3, retry_deadline_s=0.45))
    with pytest.raises(Unavailable, match="deadline"):
        await fleet.request(CHAT)
    assert sum(s.chat_requests for s in servers) == 2  # 0.3 s + the 0.15 s left
    # budget: one retry in flight at a time (ratio 0, floor 1); four requests fail at once
    budget = await make_fleet(config(servers, first_byte_timeout_s=0.3,
                                     retry_budget_min=1, retry_budget_ratio=0))
    before = sum(s.chat_requests for s in servers)
    results = await asyncio.gather(*(budget.request(CHAT) for _ in range(4)),
                                   return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert sum("retry budget exhausted" in str(r) for r in results) >= 3
    snap = budget.admin_snapshot()["retry_budget"]
    assert snap["retries_in_flight"] == 0 and snap["denied_total"] >= 3
    # 4 first tries + the granted retries (one request may walk all three servers)
    assert sum(s.chat_requests for s in servers) - before == 4 + snap["granted_total"]
    assert snap["granted_total"] <= 2 + 2  # never more than one at a time, of 4 requests


async def test_a_retry_does_not_advance_the_round_robin(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode = "hang"
    fleet = await make_fleet(config([a, b], first_byte_timeout_s=0.2, breaker_failures=100))
    for _ in range(4):
        assert served_by((await fleet.request(CHAT)).body) == "b"
    assert a.chat_requests == 2 and b.chat_requests == 4  # a is first choice every other time


async def test_open_breaker_half_opens_and_recovers(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode = "error500"
    clock = Clock()
    fleet = await make_fleet(config([a, b], breaker_failures=2, breaker_reset_s=30), None, clock)
    while a.chat_requests < 2:
        assert (await fleet.request(CHAT)).status == 200
    up = fleet.pool.get(a.url)
    assert up is not None and up.breaker.state is BreakerState.OPEN
    a.mode = "ok"
    for _ in range(4):
        await fleet.request(CHAT)
    assert a.chat_requests == 2  # open: not one request
    clock.advance(29)
    assert up.breaker.state is BreakerState.OPEN
    clock.advance(2)
    assert up.breaker.state is BreakerState.HALF_OPEN
    for _ in range(4):
        assert (await fleet.request(CHAT)).status == 200
    assert up.breaker.state is BreakerState.CLOSED and a.chat_requests >= 3


async def test_sessions_stay_on_their_worker(servers, make_fleet) -> None:
    fleet = await make_fleet(config(servers, policy=RoutingPolicy.SESSION_AFFINITY))
    homes: dict[str, set[str]] = {}
    for turn in range(3):
        for i in range(12):
            reply = await fleet.request(CHAT, session_id=f"conversation-{i}")
            homes.setdefault(f"conversation-{i}", set()).add(served_by(reply.body))
    assert all(len(h) == 1 for h in homes.values())
    assert len(set().union(*homes.values())) >= 2
    assert all(s.sessions.count("") == 0 for s in servers)  # the header is passed on


async def test_concurrent_requests_are_not_serialised(servers, make_fleet) -> None:
    a, b, c = servers
    a.mode, a.delay_s = "slow", 0.3
    fleet = await make_fleet(config([a]))
    replies = await asyncio.gather(*(fleet.request(CHAT) for _ in range(8)))
    assert all(r.status == 200 for r in replies)
    assert a.max_chat_in_flight == 8  # all at once on one upstream: nothing held a lock
    assert fleet.pool.get(a.url).outstanding == 0  # type: ignore[union-attr]


async def test_stream_not_read_to_the_end_is_settled_by_aclose(servers, make_fleet) -> None:
    a, b, c = servers
    fleet = await make_fleet(config([a], breaker_failures=1, breaker_reset_s=60))
    reply = await fleet.request({**CHAT, "stream": True})
    up = fleet.pool.get(a.url)
    assert up is not None and up.outstanding == 1
    await reply.aclose()
    assert up.outstanding == 0 and up.outcomes["cancelled"] == 1
    assert a.chat_in_flight == 0 or await _eventually(lambda: a.chat_in_flight == 0)
    # a stream read halfway, then left
    reply = await fleet.request({**CHAT, "stream": True})
    async for _ev in reply.stream:  # type: ignore[union-attr]
        break
    await reply.aclose()
    assert up.outstanding == 0 and up.outcomes["cancelled"] == 2
    assert up.breaker.state is BreakerState.CLOSED  # the caller leaving is no failure


async def test_a_cancelled_whole_answer_drops_its_connection_and_is_no_failure(
        servers, make_fleet) -> None:
    """The gateway cancels a non-streamed call whose client hung up: the connection is
    closed (the worker sees its client leave), not pooled half-read; no retry elsewhere,
    nothing against the breaker."""
    a, b = servers[:2]
    for s in (a, b):
        s.mode, s.delay_s = "slow", 1.0
    fleet = await make_fleet(config([a, b], breaker_failures=1, first_byte_timeout_s=5))
    call = asyncio.create_task(fleet.request(CHAT))
    assert await _eventually(lambda: a.chat_in_flight + b.chat_in_flight == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert fleet._client.connections == (0, 0)  # closed, not back in the keep-alive pool
    ups = [u for u in fleet.pool.upstreams if sum(u.outcomes.values())]
    assert len(ups) == 1 and dict(ups[0].outcomes) == {"cancelled": 1}
    assert ups[0].outstanding == 0 and ups[0].breaker.state is BreakerState.CLOSED
    assert ups[0].breaker.consecutive_failures == 0
    # the server finishes the answer it was writing (1 s) and sees the connection closed
    assert await _eventually(lambda: a.chat_in_flight + b.chat_in_flight == 0)
    assert a.chat_requests + b.chat_requests == 1  # not retried
    assert (await fleet.request(CHAT)).status == 200


async def test_raw_bytes_are_forwarded_as_sent(servers, make_fleet) -> None:
    a, b, c = servers
    fleet = await make_fleet(config([a]))
    raw = json.dumps({**CHAT, "stream": True}).encode()
    reply = await fleet.request(raw=raw, stream=True)
    text, errors, done = await read_stream(reply)
    assert text == "a: w0 w1 w2 w3 w4" and done and not errors
    models = await fleet.request(path="/v1/models", method="GET")
    assert models.status == 200 and json.loads(models.body or b"")["data"][0]["owned_by"] == "a"


async def _eventually(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_a_broken_upstream_is_retried_past_an_empty_budget(servers, make_fleet) -> None:
    """One upstream of three fails everything: its requests go to the others even with no
    budget at all (ratio 0, floor 0), since most of the fleet is healthy."""
    servers[0].mode = "error500"
    fleet = await make_fleet(config(servers, retry_budget_min=0, retry_budget_ratio=0,
                                    breaker_failures=1000))
    replies = await asyncio.gather(*(fleet.request(CHAT) for _ in range(12)))
    assert [r.status for r in replies] == [200] * 12
    assert servers[0].chat_requests >= 4  # round robin sent it its share first
    snap = fleet.admin_snapshot()["retry_budget"]
    assert snap["forced_total"] == servers[0].chat_requests and snap["denied_total"] == 0


async def test_the_budget_holds_when_most_of_the_fleet_fails(servers, make_fleet) -> None:
    servers[0].mode = servers[1].mode = "error500"
    fleet = await make_fleet(config(servers, retry_budget_min=0, retry_budget_ratio=0,
                                    breaker_failures=1000))
    statuses = [(await fleet.request(CHAT)).status for _ in range(9)]
    snap = fleet.admin_snapshot()["retry_budget"]
    # once both failing upstreams have failed a call, a retry is the budget's to grant
    assert statuses.count(500) >= 4 and snap["denied_total"] >= 4, (statuses, snap)
    assert snap["forced_total"] <= 2, snap


async def test_429s_are_always_budgeted(servers, make_fleet) -> None:
    servers[0].mode = "error429"
    fleet = await make_fleet(config(servers, retry_budget_min=0, retry_budget_ratio=0))
    statuses = [(await fleet.request(CHAT)).status for _ in range(3)]
    assert statuses.count(429) == 1 and fleet.admin_snapshot()["retry_budget"]["forced_total"] == 0
