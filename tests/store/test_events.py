"""Live events: one process (memory) and across processes through a real Redis."""

from __future__ import annotations

import asyncio

from babeldesk.config import StoreConfig
from babeldesk.store import open_event_bus
from babeldesk.store.events import QUEUE_SIZE, MemoryEventBus


async def _take(events, n: int) -> list[dict]:
    out = []
    async for e in events:
        out.append(e)
        if len(out) == n:
            break
    return out


async def test_memory_bus_reaches_each_listener_of_its_channel() -> None:
    bus = MemoryEventBus()
    async with bus.listen("session:a") as a1, bus.listen("session:a") as a2, \
            bus.listen("session:b") as b:
        await bus.publish("session:a", {"n": 1})
        await bus.publish("session:b", {"n": 2})
        assert await _take(a1, 1) == [{"n": 1}] and await _take(a2, 1) == [{"n": 1}]
        assert await _take(b, 1) == [{"n": 2}]


async def test_a_listener_that_falls_behind_is_ended_not_grown() -> None:
    bus = MemoryEventBus()
    async with bus.listen("agents") as slow:
        for i in range(QUEUE_SIZE * 3):
            await bus.publish("agents", {"n": i})
        got = [e async for e in slow]  # ends by itself: no unbounded queue
    assert len(got) == QUEUE_SIZE - 1 and got[0] == {"n": 0}


async def test_redis_bus_crosses_processes(redis_server) -> None:
    cfg = StoreConfig(sessions_url=redis_server.url)
    one, two = open_event_bus(cfg), open_event_bus(cfg)  # two gateways' buses
    try:
        async with one.listen("session:x") as events:
            await two.publish("session:x", {"type": "message", "text": "hola"})
            await two.publish("session:y", {"type": "message", "text": "other"})
            await two.publish("session:x", {"type": "state", "state": "with_agent"})
            got = await asyncio.wait_for(_take(events, 2), timeout=10)
        assert got == [{"type": "message", "text": "hola"},
                       {"type": "state", "state": "with_agent"}]
    finally:
        await one.close()
        await two.close()


async def test_redis_bus_survives_a_redis_restart(redis_server) -> None:
    cfg = StoreConfig(sessions_url=redis_server.url)
    bus = open_event_bus(cfg)
    try:
        async with bus.listen("session:r") as events:
            redis_server.kill()
            redis_server.start()
            for _ in range(100):  # re-subscribed within a few seconds
                await bus.publish("session:r", {"n": 1})
                try:
                    got = await asyncio.wait_for(_take(events, 1), timeout=0.2)
                    break
                except TimeoutError:
                    continue
            assert got == [{"n": 1}]
    finally:
        await bus.close()
