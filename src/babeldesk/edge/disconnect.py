"""Clients that go away: a non-streamed answer's work is cancelled when its client hangs
up, so an abandoned request does not keep a batch slot or an upstream call busy."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import ClientDisconnect
from starlette.types import Receive

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # seconds a non-streamed answer runs before its client is watched


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work`` (a non-streamed answer) in this task, cancelling it if the client
    hangs up; raises ``ClientDisconnect`` then. The watcher (a task reading ``receive``,
    whose body must already be read) is only started if the work is still running after
    ``DISCONNECT_POLL_S``: answers from the cache finish long before, and pay a timer,
    not a task. A streamed response is stopped by the server itself."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                me.cancel()
                return

    def start() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(DISCONNECT_POLL_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:  # our own cancel: the client left; nothing to answer
            me.uncancel()
            raise ClientDisconnect from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
