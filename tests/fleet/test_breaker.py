"""The breaker's state machine, driven by a controllable clock."""

from __future__ import annotations

import pytest

from babeldesk.fleet.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        permit = b.acquire()
        assert permit is not None
        permit.failure()


def test_opens_after_threshold_and_rejects_at_once(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=5, reset_timeout_s=30, clock=clock)
    fail(b, 4)
    assert b.state is BreakerState.CLOSED
    fail(b, 1)
    assert b.state is BreakerState.OPEN and b.state.gauge == 2
    assert b.acquire() is None and not b.allows()
    clock.t += 29.9
    assert b.acquire() is None
    assert b.retry_in_s == pytest.approx(0.1)


def test_success_resets_the_consecutive_count(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=3, clock=clock)
    fail(b, 2)
    b.acquire().success()  # type: ignore[union-attr]
    fail(b, 2)
    assert b.state is BreakerState.CLOSED
    fail(b, 1)
    assert b.state is BreakerState.OPEN


def test_half_open_admits_limited_trials_and_closes_on_success(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=30, half_open_trials=2, clock=clock)
    fail(b, 1)
    clock.t += 30
    assert b.state is BreakerState.HALF_OPEN and b.state.gauge == 1
    t1, t2 = b.acquire(), b.acquire()
    assert t1 is not None and t2 is not None and t1.trial and t2.trial
    assert b.acquire() is None  # the trial slots are taken
    t1.success()
    assert b.state is BreakerState.CLOSED
    t2.success()
    many = [b.acquire() for _ in range(50)]  # closed: no limit, nothing serialised
    assert all(p is not None and not p.trial for p in many)


def test_trial_failure_reopens_for_longer_capped(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=10, max_reset_timeout_s=35,
                       clock=clock)
    fail(b, 1)
    assert b.retry_in_s == pytest.approx(10)
    for expected in (20, 35, 35):  # doubles per opening, capped
        clock.t += b.retry_in_s
        trial = b.acquire()
        assert trial is not None and trial.trial
        trial.failure()
        assert b.state is BreakerState.OPEN
        assert b.retry_in_s == pytest.approx(expected)
    assert b.total_openings == 4


def test_long_closed_spell_forgets_earlier_openings(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=10, max_reset_timeout_s=100,
                       clock=clock)
    fail(b, 1)
    clock.t += 10
    b.acquire().failure()  # type: ignore[union-attr]
    assert b.retry_in_s == pytest.approx(20)
    clock.t += 20
    b.acquire().success()  # type: ignore[union-attr]
    clock.t += 5  # short spell: the next opening is longer still
    fail(b, 1)
    assert b.retry_in_s == pytest.approx(40)
    clock.t += 40
    b.acquire().success()  # type: ignore[union-attr]
    clock.t += 100  # closed for max_reset_timeout_s: back to the base time
    fail(b, 1)
    assert b.retry_in_s == pytest.approx(10)


def test_late_verdicts_of_calls_started_while_closed_are_ignored(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=2, reset_timeout_s=30, clock=clock)
    slow_ok, slow_bad = b.acquire(), b.acquire()
    fail(b, 2)
    assert b.state is BreakerState.OPEN
    slow_ok.success()  # type: ignore[union-attr]
    slow_bad.failure()  # type: ignore[union-attr]
    assert b.state is BreakerState.OPEN and b.total_openings == 1


def test_release_frees_a_trial_without_a_verdict(clock: Clock) -> None:
    b = CircuitBreaker(failure_threshold=1, reset_timeout_s=1, clock=clock)
    fail(b, 1)
    clock.t += 1
    trial = b.acquire()
    assert trial is not None and b.acquire() is None
    trial.release()
    trial.failure()  # a settled permit ignores a second verdict
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is not None
