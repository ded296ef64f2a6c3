"""A circuit breaker per upstream, asyncio-native.

closed --(N consecutive failures)--> open --(reset time)--> half-open
half-open --(trial succeeds)--> closed;  half-open --(trial fails)--> open, longer

Why by hand: pybreaker holds a lock across the whole call (it serialises concurrent
requests). ``purgatory`` (asyncio) was read and left: it reads ``time.time()`` (wall
clock, no injectable clock to test the state machine), its half-open state admits every
request instead of a limited number of trials, its open time never grows on repeated
openings (Envoy's ejection time does), and it persists state through an async repository
on every call. The state machine below is ~100 lines, synchronous, and therefore safe in
one event loop without any lock: a call takes a ``Permit`` (no await), does its I/O
without holding anything, then reports one verdict.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable

Clock = Callable[[], float]  # seconds, monotonic


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """Value of ``babeldesk_upstream_state``: 0 closed, 1 half-open, 2 open."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


@dataclass(slots=True)
class Permit:
    """Leave to make one call. ``trial`` permits are the half-open state's probes."""

    breaker: CircuitBreaker
    trial: bool
    done: bool = False

    def success(self) -> None:
        """The upstream answered (2xx, or a 4xx: the client's fault, not the server's)."""
        if not self.done:
            self.done = True
            self.breaker._on_success(self)

    def failure(self) -> None:
        """A timeout, a connection error, a 5xx or a stream broken midway."""
        if not self.done:
            self.done = True
            self.breaker._on_failure(self)

    def release(self) -> None:
        """No verdict (the client went away): frees a trial slot, changes nothing else."""
        if not self.done:
            self.done = True
            if self.trial:
                self.breaker._trials_in_flight -= 1


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        max_reset_timeout_s: float = 300.0,
        half_open_trials: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.max_reset_timeout_s = max_reset_timeout_s
        self.half_open_trials = half_open_trials
        self._clock = clock
        self._open = False  # open or half-open; which one depends on the clock
        self._open_until = 0.0  # seconds, clock; half-open from then on
        self._closed_since = clock()
        self.consecutive_failures = 0
        self.openings = 0  # openings in a row without a long closed spell: sets the open time
        self.total_openings = 0
        self._trials_in_flight = 0

    # --- reading -------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        if not self._open:
            return BreakerState.CLOSED
        if self._clock() < self._open_until:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def open_time_s(self) -> float:
        """How long the next (or current) opening lasts: doubles per opening, capped."""
        n = max(self.openings - 1, 0)
        return min(self.reset_timeout_s * (2 ** min(n, 30)), self.max_reset_timeout_s)

    @property
    def retry_in_s(self) -> float:
        """Seconds until an open breaker half-opens; 0 otherwise."""
        return max(self._open_until - self._clock(), 0.0) if self._open else 0.0

    def allows(self) -> bool:
        """Would ``acquire`` give a permit now? (No side effect; for routing.)"""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self._trials_in_flight < self.half_open_trials

    def half_open_now(self) -> None:
        """An active health check passed: stop waiting out the open time (as Envoy's
        successful_active_health_check_uneject_host), let a trial call decide."""
        if self._open:
            self._open_until = min(self._open_until, self._clock())

    def forget_failures(self) -> None:
        """Back in rotation after failed probes: a closed breaker's count starts again."""
        if not self._open:
            self.consecutive_failures = 0

    # --- calls -----------------------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """A permit, or None at once while open (or while the half-open trials are taken)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return Permit(self, trial=False)
        if state is BreakerState.HALF_OPEN and self._trials_in_flight < self.half_open_trials:
            self._trials_in_flight += 1
            return Permit(self, trial=True)
        return None

    def _on_success(self, permit: Permit) -> None:
        if permit.trial:
            self._trials_in_flight -= 1
            self._open = False
            self._closed_since = self._clock()
            self.consecutive_failures = 0
        elif not self._open:
            self.consecutive_failures = 0
        # a non-trial call that started before the breaker opened says nothing now

    def _on_failure(self, permit: Permit) -> None:
        if permit.trial:
            self._trials_in_flight -= 1
            self._trip()
        elif not self._open:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failure_threshold:
                self._trip()

    def _trip(self) -> None:
        now = self._clock()
        if not self._open and now - self._closed_since >= self.max_reset_timeout_s:
            self.openings = 0  # healthy for a long spell: forget earlier openings
        self._open = True
        self.openings += 1
        self.total_openings += 1
        self._open_until = now + self.open_time_s
