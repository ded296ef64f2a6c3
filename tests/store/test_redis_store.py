"""The Redis backends against a real redis-server: TTLs, Redis killed and restarted,
two processes appending to one session, and no acknowledged turn lost to kill -9."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig
from babeldesk.errors import Unavailable
from babeldesk.store import (
    LookupResult,
    Turn,
    kb_answer_key,
    model_answer_key,
    open_answer_cache,
    open_session_store,
)
from tests.clock import Clock

from . import ops
from .redis_server import RedisServer, release, run_appenders, start_appenders

pytestmark = pytest.mark.slow


def config(server: RedisServer, **kw: object) -> StoreConfig:
    return StoreConfig(cache_url=server.url, sessions_url=server.url, **kw)  # type: ignore[arg-type]


async def test_cache_hit_miss_and_kinds(redis_server: RedisServer) -> None:
    cache = open_answer_cache(config(redis_server))
    try:
        kb = kb_answer_key("refund_status", "es", "v1")
        model = model_answer_key("es", "¿Puedo pagar con PayPal?", "v1")
        assert (await cache.get(kb)).result is LookupResult.MISS
        assert await cache.set(kb, "El reembolso tarda 5 días.") is True
        assert await cache.set(model, "Sí, aceptamos PayPal.") is True
        hit = await cache.get(kb)
        assert hit.hit and hit.value == "El reembolso tarda 5 días." and hit.kind.value == "kb"
        again = await cache.get(model_answer_key("es", "¿puedo pagar con paypal", "v1"))
        assert again.hit and again.value == "Sí, aceptamos PayPal." and again.kind.value == "model"
        # a new KB version is a different key
        assert not (await cache.get(kb_answer_key("refund_status", "es", "v2"))).hit
        await cache.clear()
        assert not (await cache.get(kb)).hit
    finally:
        await cache.close()


async def test_cache_entries_expire(redis_server: RedisServer) -> None:
    cache = open_answer_cache(config(redis_server, cache_model_ttl_s=0.3))
    try:
        short = model_answer_key("en", "do you ship to Norway", "v1")
        kb = kb_answer_key("international_shipping", "en", "v1")
        await cache.set(short, "yes")
        await cache.set(kb, "We ship to 40 countries.")
        await cache.set(model_answer_key("en", "explicit", "v1"), "x", ttl_s=0.3)
        assert (await cache.get(short)).hit
        # Redis expires keys on its own clock: wait for the miss, with a deadline
        deadline = time.monotonic() + 10
        while (await cache.get(short)).hit:
            assert time.monotonic() < deadline, "the entry outlived its TTL"
            await asyncio.sleep(0.02)
        assert (await cache.get(model_answer_key("en", "explicit", "v1"))).result is LookupResult.MISS
        assert (await cache.get(kb)).hit  # the KB kind's TTL is a week
    finally:
        await cache.close()


async def test_redis_down_bypasses_the_cache_then_recovers(redis_server: RedisServer) -> None:
    clock = Clock()
    cache = open_answer_cache(config(redis_server, cache_bypass_s=30.0), clock)
    key = kb_answer_key("opening_hours", "fr", "v1")
    try:
        await cache.set(key, "Nous sommes ouverts 9h-18h.")
        redis_server.kill()
        lookup = await cache.get(key)  # no exception: an error the caller counts
        assert lookup.result is LookupResult.ERROR and lookup.value is None
        assert await cache.set(key, "skipped") is False
        redis_server.start()  # same dir: the AOF brings the entry back
        assert (await cache.get(key)).result is LookupResult.ERROR  # still in the bypass window
        clock.advance(29.0)
        assert (await cache.get(key)).result is LookupResult.ERROR
        clock.advance(2.0)
        back = await cache.get(key)
        assert back.hit and back.value == "Nous sommes ouverts 9h-18h."
    finally:
        await cache.close()


async def test_redis_down_sessions_answer_503_not_a_lost_turn(redis_server: RedisServer) -> None:
    store = open_session_store(config(redis_server, retry_after_s=7.0))
    try:
        sid = await ops.create(store)
        await ops.append(store, sid, Turn("user", "first"))
        redis_server.kill()
        with pytest.raises(Unavailable) as err:
            await ops.append(store, sid, Turn("user", "second"))
        assert err.value.status == 503 and err.value.retry_after == 7.0
        with pytest.raises(Unavailable):
            await store.transcript(sid)
        with pytest.raises(Unavailable):
            await store.ping()
        redis_server.start()
        await ops.append(store, sid, Turn("user", "second, retried"))
        texts = [t.text for t in (await store.transcript(sid)).turns]
        assert texts == ["first", "second, retried"]
    finally:
        await store.close()


async def test_two_processes_append_to_one_session(redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    store = open_session_store(config(redis_server))
    try:
        sid = await ops.create(store)
        n = 150
        acked = run_appenders(redis_server.url, sid, ["a", "b"], n, tmp_path)
        assert acked == [list(range(n)), list(range(n))]
        texts = [t.text for t in (await store.transcript(sid)).turns]
        assert len(texts) == 2 * n  # nothing lost, nothing doubled
        for writer in ("a", "b"):  # each replica's turns in the order it wrote them
            assert [t for t in texts if t.startswith(writer)] == [f"{writer}-{i}" for i in range(n)]
        # they really did interleave (a test that serialised the writers would prove nothing)
        first_b = texts.index("b-0")
        assert any(t.startswith("a") for t in texts[first_b:])
    finally:
        await store.close()


async def test_kill_9_and_restart_with_aof_loses_no_acknowledged_turn(
        redis_server: RedisServer, tmp_path: Path) -> None:
    store = open_session_store(config(redis_server))
    try:
        sid = await ops.create(store)
        await ops.set_language(store, sid, "pt")
        go = tmp_path / "go"
        procs = start_appenders(redis_server.url, sid, ["a", "b"], 100_000, go)
        try:
            release(go, ["a", "b"])
            deadline = time.monotonic() + 30
            while len((await store.transcript(sid)).turns) < 200:
                assert time.monotonic() < deadline, "appenders made no progress"
                await asyncio.sleep(0.05)
            redis_server.kill()  # mid-stream: both writers get 503 and stop
            outs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        acked = {w: [int(x) for x in out.split()] for w, (out, _) in zip("ab", outs)}
        assert all(acked[w] for w in "ab")
        redis_server.start()  # same dir: replays the AOF
        transcript = await store.transcript(sid)
        texts = [t.text for t in transcript.turns]
        assert transcript.language == "pt"
        assert len(texts) == len(set(texts))
        for w in "ab":
            stored = [int(t.split("-")[1]) for t in texts if t.startswith(w)]
            # every acknowledged turn is there, in order; at most the one in flight beyond it
            assert stored[: len(acked[w])] == acked[w]
            assert len(stored) - len(acked[w]) in (0, 1)
    finally:
        await store.close()
