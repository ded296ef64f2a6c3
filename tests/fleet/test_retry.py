"""The retry budget: retries in flight <= a share of requests in flight, with a floor."""

from __future__ import annotations

from babeldesk.fleet.retry import RetryBudget


def test_floor_then_share_of_requests_in_flight() -> None:
    b = RetryBudget(ratio=0.2, minimum=3)
    assert [b.try_retry(requests_in_flight=5) for _ in range(4)] == [True, True, True, False]
    assert b.try_retry(requests_in_flight=20) is True  # 20% of 20 = 4
    assert b.try_retry(requests_in_flight=20) is False
    for _ in range(4):
        b.done()
    assert b.retries_in_flight == 0 and b.try_retry(requests_in_flight=1) is True
    assert b.snapshot()["granted_total"] == 5 and b.snapshot()["denied_total"] == 2


def test_zero_floor_and_ratio_means_no_retries() -> None:
    b = RetryBudget(ratio=0.0, minimum=0)
    assert not b.try_retry(requests_in_flight=100)


def test_forced_retries_are_granted_and_counted() -> None:
    b = RetryBudget(ratio=0.0, minimum=0)
    assert b.try_retry(requests_in_flight=10, forced=True)
    assert not b.try_retry(requests_in_flight=10)  # the forced one is in flight
    assert b.snapshot()["forced_total"] == 1 and b.retries_in_flight == 1
