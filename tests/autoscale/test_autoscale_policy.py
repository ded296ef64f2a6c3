"""Table-driven tests of ``decide``: sustained vs brief spikes, the off-peak window,
cooldowns, bounds, clock and time-zone edges."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from babeldesk.autoscale.policy import PolicyConfig, Sample, decide, in_offpeak
from babeldesk.errors import ConfigError, InvalidRequest

MIN = 60.0
# capacity 10 rps/replica, target 80% -> 8 rps per replica before a scale-up
CFG = PolicyConfig(capacity_rps=10, min_replicas=1, max_replicas=10, timezone="UTC")


def ts(text: str) -> float:
    """ISO time with an explicit offset -> POSIX seconds."""
    return datetime.fromisoformat(text).timestamp()


NOON = ts("2026-06-15T12:00:00+00:00")


def series(now: float, *spans: tuple[float, float, float, int]) -> list[Sample]:
    """Samples every minute; each span is (from_min_ago, to_min_ago, qps, replicas),
    both ends included, oldest span first."""
    out: list[Sample] = []
    for start, end, qps, replicas in spans:
        m = start
        while m >= end:
            at = now - m * MIN
            if not out or at > out[-1].at:
                out.append(Sample(at, qps, replicas))
            m -= 1
    return out


SCALE_UP_CASES = [
    # (id, spans, expected)
    ("sustained 20 rps on 2 replicas -> 3", [(30, 0, 20.0, 2)], 3),
    ("brief 5-minute spike is ignored", [(30, 6, 10.0, 2), (5, 0, 30.0, 2)], 2),
    ("one dip inside the 10 minutes breaks it", [(30, 4, 20.0, 2), (3, 3, 10.0, 2),
                                                 (2, 0, 20.0, 2)], 2),
    ("exactly at 80% is not above", [(30, 0, 16.0, 2)], 2),
    ("just above 80% scales by one", [(30, 0, 16.5, 2)], 3),
    ("history shorter than 10 minutes", [(5, 0, 20.0, 2)], 2),
    ("9.5 minutes above is still brief", [(20, 10, 10.0, 2), (9, 0, 30.0, 2)], 2),
    ("big sustained jump goes straight to the need", [(30, 0, 60.0, 2)], 8),
    ("capped at max_replicas", [(30, 0, 1000.0, 2)], 10),
    ("scale-up cooldown: last change 3 minutes ago",
     [(30, 4, 20.0, 1), (3, 0, 20.0, 2)], 2),
    ("scale-up cooldown over: last change 6 minutes ago",
     [(30, 7, 20.0, 1), (6, 0, 20.0, 2)], 3),
    ("scale to zero fleet starts again on sustained traffic", [(30, 0, 2.0, 0)], 1),
]


@pytest.mark.parametrize("spans,expected", [c[1:] for c in SCALE_UP_CASES],
                         ids=[c[0] for c in SCALE_UP_CASES])
def test_scale_up(spans: list[tuple[float, float, float, int]], expected: int) -> None:
    cfg = replace(CFG, min_replicas=0)
    assert decide(series(NOON, *spans), NOON, cfg) == expected


def test_gap_in_samples_breaks_sustained() -> None:
    hist = [s for s in series(NOON, (30, 0, 20.0, 2)) if not (NOON - 6 * MIN <= s.at <= NOON - 4 * MIN)]
    assert decide(hist, NOON, CFG) == 2
    assert decide(series(NOON, (30, 0, 20.0, 2)), NOON, CFG) == 3


def test_stale_samples_do_not_scale_up() -> None:
    hist = series(NOON - 5 * MIN, (30, 0, 20.0, 2))  # last sample 5 minutes before now
    assert decide(hist, NOON, CFG) == 2


def night(local: str, tz: str = "UTC") -> float:
    return ts(local)


OFFPEAK_CASES = [
    # (id, now (ISO with offset), spans, config changes, expected)
    ("22:00:00 sharp halves", "2026-06-15T22:00:00+00:00", [(60, 0, 5.0, 8)], {}, 4),
    ("21:59:59 keeps", "2026-06-15T21:59:59+00:00", [(60, 0, 5.0, 8)], {}, 8),
    ("after midnight still off-peak", "2026-06-16T03:00:00+00:00", [(60, 0, 5.0, 8)], {}, 4),
    ("05:59:59 still off-peak", "2026-06-16T05:59:59+00:00", [(60, 0, 5.0, 8)], {}, 4),
    ("06:00:00 window closed", "2026-06-16T06:00:00+00:00", [(60, 0, 5.0, 8)], {}, 8),
    ("odd count rounds up", "2026-06-15T23:00:00+00:00", [(60, 0, 1.0, 5)], {}, 3),
    ("never below what traffic needs", "2026-06-15T23:00:00+00:00",
     [(60, 0, 50.0, 8)], {}, 7),
    ("recent peak counts for the floor", "2026-06-15T23:00:00+00:00",
     [(60, 6, 5.0, 8), (5, 5, 60.0, 8), (4, 0, 5.0, 8)], {}, 8),
    ("scale-down cooldown: change 20 minutes ago", "2026-06-15T23:00:00+00:00",
     [(60, 21, 5.0, 16), (20, 0, 5.0, 8)], {}, 8),
    ("scale-down cooldown over: change 31 minutes ago", "2026-06-15T23:00:00+00:00",
     [(60, 32, 5.0, 16), (31, 0, 5.0, 8)], {}, 4),
    ("min_replicas holds", "2026-06-15T23:00:00+00:00", [(60, 0, 0.0, 2)],
     {"min_replicas": 2}, 2),
    ("halving stops at min_replicas", "2026-06-15T23:00:00+00:00", [(60, 0, 0.0, 8)],
     {"min_replicas": 6}, 6),
    ("window not crossing midnight: 00:59", "2026-06-16T00:59:00+00:00",
     [(60, 0, 0.0, 8)], {"offpeak_start": "01:00", "offpeak_end": "05:00"}, 8),
    ("window not crossing midnight: 01:00", "2026-06-16T01:00:00+00:00",
     [(60, 0, 0.0, 8)], {"offpeak_start": "01:00", "offpeak_end": "05:00"}, 4),
    ("empty window never scales down", "2026-06-16T01:00:00+00:00",
     [(60, 0, 0.0, 8)], {"offpeak_start": "22:00", "offpeak_end": "22:00"}, 8),
    # time zones: the window follows the local wall clock, DST included
    ("Berlin summer: 20:30 UTC is 22:30 CEST", "2026-06-15T20:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Europe/Berlin"}, 4),
    ("Berlin winter: 20:30 UTC is 21:30 CET", "2026-01-15T20:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Europe/Berlin"}, 8),
    ("Berlin day before spring-forward: 04:30 UTC is 05:30 CET", "2026-03-28T04:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Europe/Berlin"}, 4),
    ("Berlin spring-forward day: 04:30 UTC is 06:30 CEST", "2026-03-29T04:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Europe/Berlin"}, 8),
    ("Berlin fall-back night: 04:30 UTC is 05:30 CET", "2026-10-25T04:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Europe/Berlin"}, 4),
    ("Kolkata +05:30: 16:30 UTC is 22:00 IST", "2026-06-15T16:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Asia/Kolkata"}, 4),
    ("Kolkata +05:30: 16:29 UTC is 21:59 IST", "2026-06-15T16:29:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "Asia/Kolkata"}, 8),
    ("New York: 02:30 UTC is 22:30 EDT", "2026-06-16T02:30:00+00:00",
     [(60, 0, 0.0, 8)], {"timezone": "America/New_York"}, 4),
    ("sustained overload beats the night window", "2026-06-15T23:00:00+00:00",
     [(60, 0, 70.0, 8)], {}, 9),
]


@pytest.mark.parametrize("now_iso,spans,changes,expected", [c[1:] for c in OFFPEAK_CASES],
                         ids=[c[0] for c in OFFPEAK_CASES])
def test_offpeak(now_iso: str, spans: list[tuple[float, float, float, int]],
                 changes: dict[str, object], expected: int) -> None:
    now = ts(now_iso)
    cfg = replace(CFG, **changes)
    assert decide(series(now, *spans), now, cfg) == expected


BOUNDS_CASES = [
    ("empty history -> min_replicas", [], 1),
    ("below min is lifted", [(5, 0, 0.0, 0)], 1),
    ("above max is cut", [(5, 0, 0.0, 20)], 10),
    ("steady inside bounds keeps", [(30, 0, 10.0, 3)], 3),
]


@pytest.mark.parametrize("spans,expected", [c[1:] for c in BOUNDS_CASES],
                         ids=[c[0] for c in BOUNDS_CASES])
def test_bounds(spans: list[tuple[float, float, float, int]], expected: int) -> None:
    assert decide(series(NOON, *spans), NOON, CFG) == expected


def test_future_samples_are_ignored() -> None:
    hist = series(NOON, (30, 0, 10.0, 2)) + [Sample(NOON + 60, 500.0, 7)]
    assert decide(hist, NOON, CFG) == 2


def test_unsorted_history_is_rejected() -> None:
    hist = series(NOON, (30, 0, 10.0, 2))
    hist[3], hist[4] = hist[4], hist[3]
    with pytest.raises(InvalidRequest):
        decide(hist, NOON, CFG)


@pytest.mark.parametrize("changes,key", [
    ({"timezone": "Mars/Olympus"}, "autoscale.timezone"),
    ({"offpeak_start": "24:00"}, "autoscale.offpeak_start"),
    ({"offpeak_end": "6pm"}, "autoscale.offpeak_end"),
    ({"max_replicas": 0}, "autoscale.max_replicas"),
    ({"min_replicas": 5, "max_replicas": 4}, "autoscale.max_replicas"),
    ({"capacity_rps": 0}, "autoscale.capacity_rps"),
    ({"target_utilization": 1.5}, "autoscale.target_utilization"),
])
def test_config_errors_name_the_key(changes: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        replace(CFG, **changes)
    assert err.value.key == key


def test_in_offpeak_uses_local_clock() -> None:
    cfg = replace(CFG, timezone="Asia/Tokyo")
    assert in_offpeak(ts("2026-06-15T13:00:00+00:00"), cfg)  # 22:00 JST
    assert not in_offpeak(ts("2026-06-15T12:59:59+00:00"), cfg)


def test_result_always_within_bounds_and_never_below_need_at_night() -> None:
    rng = random.Random(7)
    cfg = replace(CFG, min_replicas=2, max_replicas=12)
    start = datetime(2026, 6, 15, tzinfo=UTC).timestamp()
    for _ in range(200):
        now = start + rng.uniform(0, 86400)
        hist: list[Sample] = []
        replicas = rng.randint(0, 16)
        for i in range(40):
            if rng.random() < 0.1:
                replicas = rng.randint(0, 16)
            hist.append(Sample(now - (40 - i) * MIN, rng.uniform(0, 120), replicas))
        got = decide(hist, now, cfg)
        assert cfg.min_replicas <= got <= cfg.max_replicas
        if got < hist[-1].replicas and hist[-1].replicas <= cfg.max_replicas:
            # a scale-down: only at night, never below what the last 10 minutes need
            assert in_offpeak(now, cfg)
            recent = max(s.qps for s in hist if s.at >= now - cfg.scale_down_lookback_s)
            assert got >= min(cfg.max_replicas, cfg.replicas_for(recent))
