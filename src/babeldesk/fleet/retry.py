"""Retry budget, as Envoy's ``retry_budget``: retries in flight may be at most ``ratio`` of
the requests in flight, but ``minimum`` are always allowed. A struggling fleet is not
stormed by its own gateway (each failing request cannot double the load), while a quiet
fleet with one dead worker still hides every failure. The same two numbers go into the
rendered Envoy config (``budget_percent``, ``min_retry_concurrency``).

Why no ``stamina``/``tenacity``: both were read. What they do well is back off and sleep
between attempts of the same call; here a retry goes at once to a *different* upstream,
must stop as soon as a first byte has reached the customer, and needs a fleet-wide budget,
which neither has. The loop is in ``client.py`` (attempts, deadline); the budget is here.

A fixed floor is not enough when a worker dies under load: every request in flight on it
fails at once, each wants a retry, and the ones past the floor were refused (3 real
workers, 8 clients, one SIGKILLed: 2 of 60 requests got 503 "retry budget exhausted"
while two workers stood idle). So a retry is *forced* (granted, but still counted in
flight) while most of the fleet is healthy: the caller says so (``Fleet`` counts the
upstreams that are in rotation with a closed breaker whose last call succeeded); the
budget only holds back retries when most of the fleet is failing, the storm it is for.
"""

from __future__ import annotations


class RetryBudget:
    def __init__(self, ratio: float = 0.2, minimum: int = 3) -> None:
        self.ratio = ratio
        self.minimum = minimum
        self.retries_in_flight = 0
        self.granted = 0  # since start
        self.denied = 0  # since start
        self.forced = 0  # since start: granted past the budget, the fleet being healthy

    def try_retry(self, requests_in_flight: int, *, forced: bool = False) -> bool:
        """Take a retry slot (give it back with ``done``), or say no. ``forced``: the
        fleet is mostly healthy, the retry is granted whatever the budget says."""
        if forced:
            self.retries_in_flight += 1
            self.granted += 1
            self.forced += 1
            return True
        allowed = max(self.minimum, int(self.ratio * requests_in_flight))
        if self.retries_in_flight >= allowed:
            self.denied += 1
            return False
        self.retries_in_flight += 1
        self.granted += 1
        return True

    def done(self) -> None:
        """A retry attempt finished, however it went."""
        self.retries_in_flight -= 1

    def snapshot(self) -> dict[str, int | float]:
        return {"ratio": self.ratio, "minimum": self.minimum,
                "retries_in_flight": self.retries_in_flight,
                "granted_total": self.granted, "denied_total": self.denied,
                "forced_total": self.forced}
