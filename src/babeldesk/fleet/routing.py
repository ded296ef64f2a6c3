"""Routing policies: a str enum (``RoutingPolicy`` in config) plus one method, ``order``.

``order`` ranks the upstreams a request may use, best first; the fleet tries them in that
order (bounded by its retry attempts). Primaries always come before backups, so a backup
is used only when every primary is out or has failed this request: the fallback order.

Session affinity uses ``uhashring`` (a maintained, ketama-compatible consistent hash ring
with weights) instead of a hand-written ring. The ring holds every primary, up or down;
an out upstream is skipped while walking the ring from the session's point, so only the
sessions of a failed worker move, and they move back when it returns.
"""

from __future__ import annotations

import abc
import random
from typing import Sequence

from uhashring import HashRing

from babeldesk.config import RoutingPolicy
from babeldesk.fleet.pool import Upstream


class Router(abc.ABC):
    policy: RoutingPolicy

    @abc.abstractmethod
    def order(self, candidates: Sequence[Upstream], session_id: str | None) -> list[Upstream]:
        """``candidates``: the upstreams usable now (healthy, breaker not open), primaries and
        backups. Returns them best first, every primary before every backup."""

    def rebuild(self, upstreams: Sequence[Upstream]) -> None:
        """Called with every upstream (up or down) when the pool's membership changes."""


def _split(candidates: Sequence[Upstream]) -> tuple[list[Upstream], list[Upstream]]:
    return [u for u in candidates if not u.backup], [u for u in candidates if u.backup]


class WeightedRoundRobin(Router):
    """nginx's smooth weighted round robin: weights 5,1,1 give a a b a c a a, not a a a a a b c."""

    policy = RoutingPolicy.WEIGHTED_ROUND_ROBIN

    def __init__(self) -> None:
        self._current: dict[str, int] = {}  # upstream name -> running score

    def _rank(self, group: list[Upstream]) -> list[Upstream]:
        if len(group) <= 1:
            return list(group)
        total = 0
        for u in group:
            self._current[u.name] = self._current.get(u.name, 0) + u.weight
            total += u.weight
        best = max(group, key=lambda u: self._current[u.name])
        self._current[best.name] -= total
        rest = sorted((u for u in group if u is not best), key=lambda u: -self._current[u.name])
        return [best, *rest]

    def order(self, candidates: Sequence[Upstream], session_id: str | None) -> list[Upstream]:
        primaries, backups = _split(candidates)
        return self._rank(primaries) + self._rank(backups)


class LeastOutstanding(Router):
    """Fewest requests in flight per unit of weight; ties broken at random."""

    policy = RoutingPolicy.LEAST_OUTSTANDING

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def _rank(self, group: list[Upstream]) -> list[Upstream]:
        keyed = [(u.outstanding / u.weight, self._rng.random(), u) for u in group]
        return [u for _, _, u in sorted(keyed, key=lambda t: (t[0], t[1]))]

    def order(self, candidates: Sequence[Upstream], session_id: str | None) -> list[Upstream]:
        primaries, backups = _split(candidates)
        return self._rank(primaries) + self._rank(backups)


class SessionAffinity(Router):
    """Consistent hash of the session id over all primaries; requests without a session id
    go to the least loaded upstream."""

    policy = RoutingPolicy.SESSION_AFFINITY

    def __init__(self, rng: random.Random | None = None) -> None:
        self._fallback = LeastOutstanding(rng)
        self._ring: HashRing | None = None
        self._ring_nodes: dict[str, int] = {}  # name -> weight the ring was built with
        self._backup_ring: HashRing | None = None
        self._backup_nodes: dict[str, int] = {}

    def rebuild(self, upstreams: Sequence[Upstream]) -> None:
        prim = {u.name: u.weight for u in upstreams if not u.backup}
        back = {u.name: u.weight for u in upstreams if u.backup}
        if prim != self._ring_nodes:
            self._ring_nodes = prim
            self._ring = _ring(prim)
        if back != self._backup_nodes:
            self._backup_nodes = back
            self._backup_ring = _ring(back)

    def order(self, candidates: Sequence[Upstream], session_id: str | None) -> list[Upstream]:
        if not session_id:
            return self._fallback.order(candidates, None)
        primaries, backups = _split(candidates)
        return _walk(self._ring, primaries, session_id) + _walk(
            self._backup_ring, backups, session_id)


def _ring(nodes: dict[str, int]) -> HashRing | None:
    if not nodes:
        return None
    return HashRing(nodes={name: {"weight": w} for name, w in nodes.items()})


def _walk(ring: HashRing | None, group: list[Upstream], key: str) -> list[Upstream]:
    """``group`` in ring order from ``key``'s point; members missing from the ring (just
    added, ring not rebuilt yet) go last."""
    by_name = {u.name: u for u in group}
    out: list[Upstream] = []
    if ring is not None:
        for name in ring.iterate_nodes(key):
            u = by_name.pop(name, None)
            if u is not None:
                out.append(u)
            if not by_name:
                break
    return out + list(by_name.values())


def make_router(policy: RoutingPolicy, rng: random.Random | None = None) -> Router:
    if policy is RoutingPolicy.WEIGHTED_ROUND_ROBIN:
        return WeightedRoundRobin()
    if policy is RoutingPolicy.LEAST_OUTSTANDING:
        return LeastOutstanding(rng)
    return SessionAffinity(rng)
