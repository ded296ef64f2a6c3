"""Routing policies over real ``Upstream`` objects (no network)."""

from __future__ import annotations

import collections
import random

from babeldesk.config import RoutingPolicy
from babeldesk.fleet.breaker import CircuitBreaker
from babeldesk.fleet.pool import Pool, Target, Upstream
from babeldesk.fleet.routing import SessionAffinity, make_router


def pool(*specs: tuple[str, int, bool]) -> list[Upstream]:
    p = Pool(lambda: CircuitBreaker())
    p.set_targets([Target(f"http://{n}:1", f"http://{n}:1", w, b) for n, w, b in specs])
    return p.upstreams


def short(u: Upstream) -> str:
    return u.name.split("//")[1].split(":")[0]


def test_smooth_weighted_round_robin_sequence() -> None:
    ups = pool(("a", 5, False), ("b", 1, False), ("c", 1, False))
    r = make_router(RoutingPolicy.WEIGHTED_ROUND_ROBIN)
    picks = "".join(short(r.order(ups, None)[0]) for _ in range(7))
    assert picks == "aabacaa"  # nginx's smooth sequence: b and c are not bunched


def test_least_outstanding_per_weight() -> None:
    a, b, c = pool(("a", 1, False), ("b", 2, False), ("c", 1, False))
    a.outstanding, b.outstanding, c.outstanding = 2, 3, 1
    r = make_router(RoutingPolicy.LEAST_OUTSTANDING, random.Random(0))
    assert [short(u) for u in r.order([a, b, c], None)] == ["c", "b", "a"]


def test_backups_come_after_every_primary_in_every_policy() -> None:
    ups = pool(("p1", 1, False), ("bk", 9, True), ("p2", 1, False))
    for policy in RoutingPolicy:
        r = make_router(policy, random.Random(1))
        r.rebuild(ups)
        for key in (None, "s1", "s2", "s3"):
            order = [short(u) for u in r.order(ups, key)]
            assert order[-1] == "bk", (policy, order)
        # every primary out: the backup is the choice
        assert [short(u) for u in r.order([ups[1]], "s1")] == ["bk"]


def test_session_affinity_moves_only_the_failed_workers_sessions() -> None:
    ups = pool(("a", 1, False), ("b", 1, False), ("c", 1, False))
    r = make_router(RoutingPolicy.SESSION_AFFINITY)
    assert isinstance(r, SessionAffinity)
    r.rebuild(ups)
    sessions = [f"session-{i}" for i in range(600)]
    before = {s: short(r.order(ups, s)[0]) for s in sessions}
    assert set(collections.Counter(before.values())) == {"a", "b", "c"}
    assert min(collections.Counter(before.values()).values()) > 100  # roughly even
    # deterministic: the same session lands on the same worker every time
    assert all(short(r.order(ups, s)[0]) == before[s] for s in sessions[:50])
    # b is out (health or breaker): candidates lack it, the ring is unchanged
    without_b = [u for u in ups if short(u) != "b"]
    during = {s: short(r.order(without_b, s)[0]) for s in sessions}
    moved = {s for s in sessions if during[s] != before[s]}
    assert moved == {s for s in sessions if before[s] == "b"}
    # b is back: its sessions return to it
    assert {s: short(r.order(ups, s)[0]) for s in sessions} == before


def test_session_affinity_weights_and_new_member() -> None:
    ups = pool(("a", 3, False), ("b", 1, False))
    r = make_router(RoutingPolicy.SESSION_AFFINITY)
    r.rebuild(ups)
    counts = collections.Counter(short(r.order(ups, f"s{i}")[0]) for i in range(2000))
    assert counts["a"] > 2 * counts["b"]
    # a member added to the pool but not yet in the ring is still usable, last
    extra = pool(("c", 1, False))
    assert short(r.order([*ups, *extra], "s1")[-1]) == "c"


def test_no_session_falls_back_to_least_outstanding() -> None:
    a, b = pool(("a", 1, False), ("b", 1, False))
    a.outstanding = 5
    r = make_router(RoutingPolicy.SESSION_AFFINITY)
    r.rebuild([a, b])
    assert short(r.order([a, b], None)[0]) == "b"
    assert short(r.order([a, b], "")[0]) == "b"
