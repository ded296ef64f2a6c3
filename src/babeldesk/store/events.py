"""Live conversation events between the customer's page and the agents: publish on a
channel (``session:<id>``, ``agents``), subscribe with a bounded queue per listener.

``MemoryEventBus`` reaches the listeners of one process. ``RedisEventBus`` reaches every
gateway on one Redis: each process holds one pub/sub connection, pattern-subscribed to
the prefix's event channels, and fans each message out to its local listeners, so a
thousand open event streams cost one Redis connection, not a thousand. Redis pub/sub is
fire-and-forget: an event published while a gateway's connection is down is not
replayed; the transcript (``GET``) is the record, the stream only says "something new".

A listener that does not keep up (``QUEUE_SIZE`` events behind) is ended rather than let
its queue grow; its client reconnects (EventSource does) and reads the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from babeldesk.errors import Unavailable

log = logging.getLogger(__name__)
QUEUE_SIZE = 256  # events a listener may fall behind before it is ended
MAX_LISTENERS = 2000  # per process; one more is a 503
_END = object()  # ends a listener's stream
RECONNECT_S = 0.5  # first wait before re-subscribing after Redis went away, doubling to 8 s

Event = dict[str, Any]


class EventBus(Protocol):
    async def publish(self, channel: str, event: Event) -> None: ...

    def listen(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``async with bus.listen(ch) as events: async for e in events: ...``; subscribed
        when the block is entered, so nothing published after that is missed."""
        ...

    async def close(self) -> None: ...


class _Stream:
    """A listener's events; a plain iterator (not a generator), so a cancelled wait for
    the next event leaves it usable."""

    def __init__(self, q: asyncio.Queue[Any]) -> None:
        self._q = q
        self._ended = False

    def __aiter__(self) -> _Stream:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        item = await self._q.get()
        if item is _END:
            self._ended = True
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


class _Listeners:
    """The process's listeners per channel, each a bounded queue."""

    def __init__(self) -> None:
        self._queues: dict[str, set[asyncio.Queue[Any]]] = {}
        self.count = 0

    def deliver(self, channel: str, event: Event) -> None:
        for q in list(self._queues.get(channel, ())):
            if q.qsize() >= QUEUE_SIZE - 1:  # too slow: ended (the last slot is the marker)
                q.put_nowait(_END)
                self._drop(channel, q)
            else:
                q.put_nowait(event)

    def _drop(self, channel: str, q: asyncio.Queue[Any]) -> None:
        qs = self._queues.get(channel)
        if qs is not None and q in qs:
            qs.discard(q)
            self.count -= 1
            if not qs:
                del self._queues[channel]

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[Event]]:
        if self.count >= MAX_LISTENERS:
            raise Unavailable("too many open event streams", retry_after=5)
        q: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)
        self._queues.setdefault(channel, set()).add(q)
        self.count += 1

        try:
            yield _Stream(q)
        finally:
            self._drop(channel, q)

    def end_all(self) -> None:
        for channel, qs in list(self._queues.items()):
            for q in list(qs):
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(_END)


class MemoryEventBus:
    """One process's listeners (serve with sqlite or memory sessions)."""

    def __init__(self) -> None:
        self._listeners = _Listeners()

    async def publish(self, channel: str, event: Event) -> None:
        self._listeners.deliver(channel, event)

    def listen(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        return self._listeners.listen(channel)

    async def close(self) -> None:
        self._listeners.end_all()


def connect_pubsub(url: str, connect_timeout_s: float) -> Redis:
    """A client for the subscription: no read timeout (a quiet channel is not a failure),
    a PING every 30 s to notice a dead connection."""
    return Redis.from_url(url, socket_connect_timeout=connect_timeout_s,
                          health_check_interval=30, decode_responses=True)


class RedisEventBus:
    """Events through Redis pub/sub, so every gateway on one Redis sees them."""

    def __init__(self, client: Redis, prefix: str = "babeldesk:") -> None:
        self._redis = client
        self._prefix = prefix + "events:"
        self._listeners = _Listeners()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def publish(self, channel: str, event: Event) -> None:
        try:
            await self._redis.publish(self._prefix + channel,
                                      json.dumps(event, ensure_ascii=False))
        except (RedisError, OSError) as exc:  # live delivery is best effort; the record is not
            log.warning("event publish failed (%s): %s", channel, exc)

    def listen(self, channel: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        return self._listen(channel)

    @contextlib.asynccontextmanager
    async def _listen(self, channel: str) -> AsyncIterator[AsyncIterator[Event]]:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout=5.0)
        except TimeoutError:
            raise Unavailable("event stream unavailable: Redis did not answer",
                              retry_after=5) from None
        async with self._listeners.listen(channel) as events:
            yield events

    async def _read(self) -> None:
        """One pattern subscription for the whole process; re-subscribes after a failure."""
        wait = RECONNECT_S
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self._prefix + "*")
                self._subscribed.set()
                wait = RECONNECT_S
                while True:
                    # the timeout lets the client's health check PING a quiet connection
                    msg = await pubsub.get_message(timeout=30.0)
                    if msg is None or msg.get("type") != "pmessage":
                        continue
                    channel = str(msg["channel"]).removeprefix(self._prefix)
                    try:
                        event = json.loads(msg["data"])
                    except (TypeError, ValueError):
                        continue
                    self._listeners.deliver(channel, event)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("event subscription lost (%s); again in %.1fs", exc, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, 8.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        self._listeners.end_all()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._redis.aclose()
