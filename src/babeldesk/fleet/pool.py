"""The upstream pool: one ``Upstream`` per address, with its breaker, health and load.

Membership changes (file reload, DNS re-resolution) go through ``Pool.set_targets``, which
keeps the live state (breaker, health, in-flight count) of every upstream that stays.
Everything here runs on one event loop; nothing awaits while holding state.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from babeldesk.fleet.breaker import BreakerState, CircuitBreaker


@dataclass(frozen=True, slots=True)
class Target:
    """One address to send requests to, as discovery produced it."""

    name: str  # base url of one address: "http://127.0.0.1:8001"; the pool's key
    source: str  # the configured url it came from (a DNS name may give several targets)
    weight: int = 1
    backup: bool = False
    host_header: str | None = None  # "name:port" when ``name`` was resolved from a DNS name


@dataclass(eq=False)
class Upstream:
    target: Target
    breaker: CircuitBreaker
    healthy: bool = True  # optimistic until the first probe says otherwise
    outstanding: int = 0  # requests in flight now
    health_passes: int = 0  # consecutive
    health_failures: int = 0  # consecutive
    probe_in_flight: bool = False  # invariant: at most one probe per upstream at a time
    probes: int = 0
    last_probe_at: float | None = None  # seconds, monotonic
    last_error: str = ""
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def weight(self) -> int:
        return self.target.weight

    @property
    def backup(self) -> bool:
        return self.target.backup

    @property
    def usable(self) -> bool:
        """In rotation: health checks pass and the breaker would let a call through."""
        return self.healthy and self.breaker.allows()

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        state = self.breaker.state
        return {
            "name": self.name,
            "source": self.target.source,
            "weight": self.weight,
            "backup": self.backup,
            "healthy": self.healthy,
            "state": state.value,
            "usable": self.usable,
            "outstanding": self.outstanding,
            "consecutive_failures": self.breaker.consecutive_failures,
            "openings": self.breaker.total_openings,
            "half_open_in_s": round(self.breaker.retry_in_s, 3)
            if state is BreakerState.OPEN else None,
            "last_probe_age_s": None if self.last_probe_at is None
            else round(now - self.last_probe_at, 3),
            "last_error": self.last_error,
            "requests": dict(self.outcomes),
        }


class Pool:
    def __init__(self, make_breaker: Callable[[], CircuitBreaker]) -> None:
        self._make_breaker = make_breaker
        self._by_name: dict[str, Upstream] = {}

    @property
    def upstreams(self) -> list[Upstream]:
        return list(self._by_name.values())

    def get(self, name: str) -> Upstream | None:
        return self._by_name.get(name)

    def usable(self) -> list[Upstream]:
        return [u for u in self._by_name.values() if u.usable]

    def set_targets(self, targets: Sequence[Target]) -> tuple[list[Upstream], list[Upstream]]:
        """Make the pool exactly ``targets``; returns (added, removed). Upstreams that stay
        keep their state; a changed weight or backup flag is taken over."""
        wanted = {t.name: t for t in targets}
        removed = [u for name, u in self._by_name.items() if name not in wanted]
        added: list[Upstream] = []
        by_name: dict[str, Upstream] = {}
        for name, target in wanted.items():
            up = self._by_name.get(name)
            if up is None:
                up = Upstream(target=target, breaker=self._make_breaker())
                added.append(up)
            else:
                up.target = target
            by_name[name] = up
        self._by_name = by_name
        return added, removed

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [u.snapshot(now) for u in self._by_name.values()]
