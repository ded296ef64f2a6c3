"""Traffic traces: built-in 24 h diurnal profiles and CSV files of timestamps and QPS.

A ``Trace`` is a step function: ``qps[i]`` holds from ``start + i * step_s`` until the
next point. Built-in profiles are deterministic (seeded noise) so reports reproduce.
"""

from __future__ import annotations

import csv
import enum
import itertools
import math
import random
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

from babeldesk.errors import ConfigError

DAY_S = 86_400


@dataclass(frozen=True)
class Trace:
    name: str
    start: float  # POSIX seconds of qps[0]
    step_s: float  # seconds each point holds
    qps: tuple[float, ...]  # requests/s offered, >= 0

    def __post_init__(self) -> None:
        if not self.qps:
            raise ConfigError(f"trace {self.name}", "has no points")
        if self.step_s <= 0:
            raise ConfigError(f"trace {self.name}", "step must be > 0 seconds")

    @property
    def duration_s(self) -> float:
        return self.step_s * len(self.qps)

    @property
    def peak_qps(self) -> float:
        return max(self.qps)

    def at(self, t: float) -> float:
        """Offered requests/s at POSIX time ``t`` (0 outside the trace)."""
        i = math.floor((t - self.start) / self.step_s)
        return self.qps[i] if 0 <= i < len(self.qps) else 0.0


class Profile(str, enum.Enum):
    DIURNAL = "diurnal"  # a shop's weekday: night trough, lunch and evening peaks
    SALE = "sale"  # the same day with a flash sale at 19:00-20:30 local (3x the evening)


def _diurnal_shape(hour: float) -> float:
    """Relative load by local hour, 0..1: trough ~04:00, peaks ~12:30 and ~20:30."""
    night = 0.06
    lunch = 0.75 * math.exp(-((hour - 12.5) / 2.2) ** 2)
    evening = 1.0 * math.exp(-((hour - 20.5) / 2.0) ** 2)
    morning = 0.45 * math.exp(-((hour - 9.5) / 1.8) ** 2)
    return night + lunch + evening + morning


def builtin_trace(profile: Profile, *, peak_qps: float = 40.0, day: date = date(2026, 6, 15),
                  timezone: str = "UTC", step_s: float = 60.0, seed: int = 6) -> Trace:
    """24 h starting at local midnight of ``day``; ``peak_qps`` scales the normal day's
    evening peak (the sale rises above it)."""
    zone = ZoneInfo(timezone)
    start = datetime.combine(day, time(0, 0), tzinfo=zone).timestamp()
    rng = random.Random(seed)
    top = max(_diurnal_shape(h / 60) for h in range(24 * 60))
    points: list[float] = []
    n = int(DAY_S // step_s)
    for i in range(n):
        local = datetime.fromtimestamp(start + i * step_s, zone)
        hour = local.hour + local.minute / 60 + local.second / 3600
        q = _diurnal_shape(hour) / top
        if profile is Profile.SALE and 19.0 <= hour < 20.5:
            # the announcement e-mail lands at 19:00: a sharp rise, then a slow decay
            q += 2.0 * math.exp(-(hour - 19.0) / 0.6)
        q *= 1.0 + rng.gauss(0.0, 0.04)  # minute-to-minute noise, 4%
        points.append(round(max(0.0, q * peak_qps), 3))
    name = f"{profile.value} (normal evening peak {peak_qps:g} rps, {timezone})"
    return Trace(name, start, step_s, tuple(points))


def _parse_time(value: str, zone: ZoneInfo, where: str) -> float:
    text = value.strip()
    try:
        return float(text)  # POSIX seconds
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(where, f"timestamp {value!r} is neither ISO-8601 nor POSIX seconds") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)  # naive times are local to the policy's zone
    return parsed.timestamp()


def parse_trace_csv(text: str, *, name: str = "trace", timezone: str = "UTC") -> Trace:
    """CSV with a header ``timestamp,qps`` (ISO-8601 or POSIX seconds), rows in time order,
    evenly spaced. Naive timestamps are read in ``timezone``."""
    zone = ZoneInfo(timezone)
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"timestamp", "qps"} <= rows[0].keys():
        raise ConfigError(name, "CSV needs a header with the columns timestamp,qps")
    times: list[float] = []
    qps: list[float] = []
    for n, row in enumerate(rows, start=2):
        where = f"{name}:{n}"
        times.append(_parse_time(row["timestamp"] or "", zone, where))
        try:
            q = float(row["qps"] or "")
        except ValueError as exc:
            raise ConfigError(where, f"qps {row['qps']!r} is not a number") from exc
        if not math.isfinite(q) or q < 0:
            raise ConfigError(where, f"qps must be >= 0, got {row['qps']!r}")
        qps.append(q)
    if len(times) < 2:
        raise ConfigError(name, "needs at least two rows")
    steps = [b - a for a, b in itertools.pairwise(times)]
    step = steps[0]
    if step <= 0 or any(abs(s - step) > 1e-6 * max(1.0, step) for s in steps):
        raise ConfigError(name, "rows must be in time order and evenly spaced")
    return Trace(name, times[0], step, tuple(qps))


def load_trace_csv(path: Path, *, timezone: str = "UTC") -> Trace:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from exc
    return parse_trace_csv(text, name=Path(path).name, timezone=timezone)
