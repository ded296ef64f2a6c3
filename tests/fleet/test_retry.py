"""The retry budget over a sliding window, with a controllable clock."""

from __future__ import annotations

from babeldesk.fleet.retry import WINDOW_S, RetryBudget


def test_budget_is_a_share_of_recent_requests_with_a_floor() -> None:
    now = [0.0]
    b = RetryBudget(ratio=0.2, minimum=3, clock=lambda: now[0])
    for _ in range(50):
        b.on_request()
    granted = sum(b.try_retry() for _ in range(30))
    assert granted == 10  # 20% of 50
    assert b.denied == 20
    now[0] += WINDOW_S + 0.1  # the window forgets
    assert sum(b.try_retry() for _ in range(10)) == 3  # no recent requests: the floor
