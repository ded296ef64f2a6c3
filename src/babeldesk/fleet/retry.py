"""Retry budget: retries may add at most ``ratio`` of the recent requests (plus a floor),
so a struggling fleet is not stormed by its own gateway (Envoy's retry_budget, Finagle's
RetryBudget).

Why no ``stamina``/``tenacity``: both were read. What they do well is back off and sleep
between attempts of the same call; here a retry goes at once to a *different* upstream,
must stop as soon as a first byte has reached the customer, and needs a fleet-wide budget,
which neither has. The loop is in ``client.py`` (attempts, deadline); the budget is here.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

WINDOW_S = 10.0  # seconds of history the budget looks at


class RetryBudget:
    def __init__(
        self, ratio: float = 0.2, minimum: int = 3, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self._clock = clock
        self._requests: collections.deque[float] = collections.deque()  # monotonic stamps
        self._retries: collections.deque[float] = collections.deque()
        self.denied = 0  # retries refused, since start

    def _trim(self, now: float) -> None:
        for q in (self._requests, self._retries):
            while q and q[0] <= now - WINDOW_S:
                q.popleft()

    def on_request(self) -> None:
        self._requests.append(self._clock())

    def try_retry(self) -> bool:
        """Take one retry from the budget, or say no."""
        now = self._clock()
        self._trim(now)
        allowed = max(self.minimum, int(self.ratio * len(self._requests)))
        if len(self._retries) >= allowed:
            self.denied += 1
            return False
        self._retries.append(now)
        return True

    def snapshot(self) -> dict[str, float]:
        self._trim(self._clock())
        return {"window_s": WINDOW_S, "requests": len(self._requests),
                "retries": len(self._retries), "denied_total": self.denied}
