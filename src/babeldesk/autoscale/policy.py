"""The scaling policy from the field, as one pure function.

``decide(history, now, config) -> replicas`` is used both by the simulator and by the
``autoscale run`` controller; the Kubernetes manifests encode the same rules for HPA/KEDA.

The rules, in order:

1. **Scale up** when demand stays above ``target_utilization`` (80%) of the capacity of
   the current replicas for ``sustain_s`` (10 minutes) without a gap in the samples: go to
   the replicas that bring the latest demand back to the target, at least one more.
2. **Scale down by half** only inside the nightly off-peak window (default 22:00-06:00 in
   ``timezone``), never below what the recent demand needs at the target utilization.
3. **Cooldowns**: no scale-up within ``scale_up_cooldown_s`` of the last change, no
   scale-down within ``scale_down_cooldown_s`` of it. The last change is read from the
   history itself, so the function keeps no state.
4. **Bounds**: the result is always within ``[min_replicas, max_replicas]``.

Time is POSIX seconds (UTC) everywhere; the off-peak window is evaluated in the
configured IANA time zone, so daylight-saving jumps move it with the wall clock.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babeldesk.errors import ConfigError, InvalidRequest


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of the fleet."""

    at: float  # POSIX seconds (UTC) at the end of the measured interval
    qps: float  # requests per second offered to the fleet over that interval (>= 0)
    replicas: int  # desired replicas in force at ``at`` (what the scaler last set)


def _parse_clock(key: str, value: str) -> time:
    try:
        hh, mm = value.split(":")
        return time(int(hh), int(mm))
    except ValueError as exc:
        raise ConfigError(key, f"invalid time {value!r} (want HH:MM, 00:00-23:59)") from exc


@dataclass(frozen=True)
class PolicyConfig:
    capacity_rps: float  # requests/s one replica serves within the SLO (from a bench result)
    min_replicas: int = 1
    max_replicas: int = 32
    target_utilization: float = 0.8  # fraction of capacity that triggers a scale-up
    sustain_s: float = 600.0  # demand must stay above the target this long to scale up
    max_sample_gap_s: float = 90.0  # a larger gap in the samples breaks "sustained"
    scale_up_cooldown_s: float = 300.0  # after any change, before the next scale-up
    scale_down_cooldown_s: float = 1800.0  # after any change, before the next scale-down
    scale_down_lookback_s: float = 600.0  # scale-down floor uses the peak demand of this span
    offpeak_start: str = "22:00"  # local wall clock, HH:MM
    offpeak_end: str = "06:00"  # local wall clock; may be "earlier" than start (crosses midnight)
    timezone: str = "UTC"  # IANA name, e.g. Europe/Berlin

    def __post_init__(self) -> None:
        checks = [
            ("autoscale.capacity_rps", self.capacity_rps > 0, "must be > 0"),
            ("autoscale.min_replicas", self.min_replicas >= 0, "must be >= 0"),
            ("autoscale.max_replicas", self.max_replicas >= max(1, self.min_replicas),
             "must be >= 1 and >= autoscale.min_replicas"),
            ("autoscale.target_utilization", 0 < self.target_utilization <= 1,
             "must be in (0, 1]"),
            ("autoscale.sustain_s", self.sustain_s >= 0, "must be >= 0"),
            ("autoscale.max_sample_gap_s", self.max_sample_gap_s > 0, "must be > 0"),
            ("autoscale.scale_up_cooldown_s", self.scale_up_cooldown_s >= 0, "must be >= 0"),
            ("autoscale.scale_down_cooldown_s", self.scale_down_cooldown_s >= 0,
             "must be >= 0"),
            ("autoscale.scale_down_lookback_s", self.scale_down_lookback_s >= 0,
             "must be >= 0"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise ConfigError(key, message)
        _parse_clock("autoscale.offpeak_start", self.offpeak_start)
        _parse_clock("autoscale.offpeak_end", self.offpeak_end)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError("autoscale.timezone", f"unknown time zone {self.timezone!r}") from exc

    @property
    def target_rps(self) -> float:
        """Requests/s one replica is meant to carry: capacity x target utilization."""
        return self.capacity_rps * self.target_utilization

    @property
    def history_horizon_s(self) -> float:
        """Samples older than this never change a decision; callers may drop them."""
        return (max(self.sustain_s, self.scale_up_cooldown_s, self.scale_down_cooldown_s,
                    self.scale_down_lookback_s) + 2 * self.max_sample_gap_s)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def replicas_for(self, qps: float) -> int:
        """Replicas that carry ``qps`` at the target utilization (0 for no traffic)."""
        return math.ceil(max(0.0, qps) / self.target_rps - 1e-9)

    def replicas_needed(self, qps: float) -> int:
        """Replicas that carry ``qps`` at full capacity: below this, requests queue up."""
        return math.ceil(max(0.0, qps) / self.capacity_rps - 1e-9)


def in_offpeak(now: float, config: PolicyConfig) -> bool:
    """Whether ``now`` (POSIX seconds) falls in the off-peak window, local wall clock."""
    local = datetime.fromtimestamp(now, config.zone).time()
    start = _parse_clock("autoscale.offpeak_start", config.offpeak_start)
    end = _parse_clock("autoscale.offpeak_end", config.offpeak_end)
    if start == end:
        return False  # an empty window: never scale down
    if start < end:
        return start <= local < end
    return local >= start or local < end  # the window crosses midnight


def _last_change(history: Sequence[Sample]) -> float | None:
    """Time of the latest sample whose replicas differ from the one before it."""
    for prev, cur in zip(reversed(history[:-1]), reversed(history)):
        if cur.replicas != prev.replicas:
            return cur.at
    return None


def _sustained_above(history: Sequence[Sample], now: float, threshold: float,
                     config: PolicyConfig) -> bool:
    """Every sample of ``[now - sustain_s, now]`` is above ``threshold`` and the samples
    cover the whole span (first one within a gap of its start, no gap inside, fresh)."""
    start = now - config.sustain_s
    window = [s for s in history if start <= s.at <= now]
    if not window:
        return False
    if window[0].at - start > config.max_sample_gap_s:
        return False  # not enough history yet
    if now - window[-1].at > config.max_sample_gap_s:
        return False  # stale: the metrics source stopped answering
    for prev, cur in itertools.pairwise(window):
        if cur.at - prev.at > config.max_sample_gap_s:
            return False
    return all(s.qps > threshold for s in window)


def decide(history: Sequence[Sample], now: float, config: PolicyConfig) -> int:
    """Desired replicas at ``now`` given the samples so far (oldest first).

    Samples after ``now`` are ignored. With no sample at all the answer is the current
    floor, ``min_replicas``. The current replicas are those of the latest sample.
    """
    if any(b.at < a.at for a, b in itertools.pairwise(history)):
        raise InvalidRequest("autoscale history must be sorted by time, oldest first")
    past = [s for s in history if s.at <= now]
    if not past:
        return config.min_replicas
    current = past[-1].replicas
    if current < 0:
        raise InvalidRequest(f"negative replicas in history: {current}")
    desired = current
    last_change = _last_change(past)
    since_change = math.inf if last_change is None else now - last_change

    latest_qps = past[-1].qps
    threshold = config.target_rps * current  # with 0 replicas any traffic is above
    if (since_change >= config.scale_up_cooldown_s
            and _sustained_above(past, now, threshold, config)):
        desired = max(current + 1, config.replicas_for(latest_qps))
    elif (current > config.min_replicas
            and since_change >= config.scale_down_cooldown_s
            and in_offpeak(now, config)):
        recent = [s.qps for s in past if s.at >= now - config.scale_down_lookback_s]
        floor = config.replicas_for(max(recent, default=latest_qps))
        desired = max(math.ceil(current / 2), floor)
        desired = min(desired, current)  # a scale-down step never scales up

    return max(config.min_replicas, min(config.max_replicas, desired))
