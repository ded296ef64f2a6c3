"""A clock tests drive, and a wait for a condition. The clock is the real clock plus a skew that ``advance`` moves forward, so a
test steps past a TTL, a bypass window or a breaker's open time at once instead of sleeping
for it, while timeouts that run on the real clock keep working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Clock:
    def __init__(self, base: Callable[[], float] = time.monotonic) -> None:
        self._base = base  # time.monotonic or time.time: the clock this one stands in for
        self.skew = 0.0  # seconds added by advance()

    def __call__(self) -> float:
        return self._base() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``cond()`` comes true within ``timeout`` seconds, checked every 10 ms: the
    way a test waits for an event it cannot await."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True
