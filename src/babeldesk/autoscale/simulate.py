"""Replay a traffic trace against the scaling policy, before paying for it.

Every ``tick_s`` the simulator records a ``Sample`` (offered QPS, desired replicas), asks
``decide`` for the desired replicas and applies it: new replicas serve only after
``startup_s`` (node provisioning + image pull + model load), removed replicas stop at
once (starting ones are cancelled first). Replicas are paid from the moment they are
asked for. A minute is *at risk* when the offered QPS exceeds what the ready replicas
serve within the SLO (``capacity_rps`` each).

The baseline is a fixed fleet sized for the trace's peak: the fewest replicas that carry
the peak at full capacity (so it is never at risk, and the savings are not inflated by
giving the baseline extra headroom).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from babeldesk.autoscale.policy import PolicyConfig, Sample, decide
from babeldesk.autoscale.profiles import Trace
from babeldesk.errors import ConfigError


@dataclass(frozen=True)
class SimulationConfig:
    policy: PolicyConfig
    startup_s: float = 240.0  # asked-for to ready: node start, image pull, model load
    gpus_per_replica: int = 1
    gpu_hour_usd: float = 2.50  # on-demand price of one GPU hour (an assumption; set yours)
    tick_s: float = 60.0  # control-loop period
    initial_replicas: int | None = None  # None: what the trace's first point needs

    def __post_init__(self) -> None:
        for key, ok in [("startup_s", self.startup_s >= 0),
                        ("gpus_per_replica", self.gpus_per_replica >= 1),
                        ("gpu_hour_usd", self.gpu_hour_usd >= 0),
                        ("tick_s", self.tick_s > 0),
                        ("initial_replicas",
                         self.initial_replicas is None or self.initial_replicas >= 0)]:
            if not ok:
                raise ConfigError(f"simulate.{key}", "out of range")


@dataclass(frozen=True, slots=True)
class Point:
    at: float  # POSIX seconds
    qps: float  # offered requests/s
    desired: int  # replicas asked for (and paid)
    ready: int  # replicas serving


@dataclass(frozen=True)
class FleetTotals:
    gpu_hours: float
    cost_usd: float
    minutes_at_risk: float  # minutes with offered QPS above the ready capacity
    requests_at_risk: float  # requests offered beyond the ready capacity
    max_replicas: int
    min_replicas: int


@dataclass(frozen=True)
class SimulationReport:
    trace: str
    capacity_rps: float
    startup_s: float
    gpu_hour_usd: float
    gpus_per_replica: int
    timezone: str
    peak_qps: float
    total_requests: float
    points: tuple[Point, ...]
    policy: FleetTotals
    fixed: FleetTotals
    fixed_replicas: int
    scale_events: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_hours_saved(self) -> float:
        return self.fixed.gpu_hours - self.policy.gpu_hours

    @property
    def saved_fraction(self) -> float:
        return self.gpu_hours_saved / self.fixed.gpu_hours if self.fixed.gpu_hours else 0.0

    @property
    def cost_saved_usd(self) -> float:
        return self.fixed.cost_usd - self.policy.cost_usd

    def to_dict(self, *, with_points: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "trace": self.trace, "capacity_rps": self.capacity_rps,
            "startup_s": self.startup_s, "gpu_hour_usd": self.gpu_hour_usd,
            "gpus_per_replica": self.gpus_per_replica, "timezone": self.timezone,
            "peak_qps": self.peak_qps, "total_requests": round(self.total_requests),
            "policy": asdict(self.policy), "fixed": asdict(self.fixed),
            "fixed_replicas": self.fixed_replicas, "scale_events": self.scale_events,
            "gpu_hours_saved": round(self.gpu_hours_saved, 3),
            "saved_fraction": round(self.saved_fraction, 4),
            "cost_saved_usd": round(self.cost_saved_usd, 2),
            "config": self.config,
        }
        if with_points:
            out["points"] = [{"at": p.at, "qps": p.qps, "desired": p.desired, "ready": p.ready}
                             for p in self.points]
        return out


def _totals(points: list[Point], capacity_rps: float, tick_s: float, gpus: int,
            price: float) -> FleetTotals:
    gpu_hours = sum(p.desired for p in points) * gpus * tick_s / 3600
    short = [max(0.0, p.qps - p.ready * capacity_rps) for p in points]
    return FleetTotals(
        gpu_hours=round(gpu_hours, 3),
        cost_usd=round(gpu_hours * price, 2),
        minutes_at_risk=round(sum(tick_s for s in short if s > 1e-9) / 60, 2),
        requests_at_risk=round(sum(s * tick_s for s in short), 1),
        max_replicas=max(p.desired for p in points),
        min_replicas=min(p.desired for p in points),
    )


def simulate(trace: Trace, config: SimulationConfig,
             progress: Callable[[int, int], None] | None = None) -> SimulationReport:
    """Replay ``trace`` tick by tick; ``progress(done, total)`` is called every tick."""
    policy = config.policy
    tick = config.tick_s
    n = max(1, int(trace.duration_s // tick))
    first = config.initial_replicas
    if first is None:
        first = policy.replicas_for(trace.at(trace.start))
    desired = max(policy.min_replicas, min(policy.max_replicas, first))
    starting: list[float] = []  # ready-at times of replicas still starting, oldest first
    ready = desired  # the initial fleet is up
    history: list[Sample] = []
    points: list[Point] = []
    events = 0
    for i in range(n):
        now = trace.start + i * tick
        qps = trace.at(now)
        history.append(Sample(now, qps, desired))
        horizon = now - policy.history_horizon_s
        while history and history[0].at < horizon:
            history.pop(0)
        want = decide(history, now, policy)
        if want > desired:
            starting.extend([now + config.startup_s] * (want - desired))
        elif want < desired:
            drop = desired - want
            cancel = min(drop, len(starting))
            del starting[len(starting) - cancel:]  # the newest starting ones go first
            ready -= drop - cancel
        if want != desired:
            events += 1
        desired = want
        while starting and starting[0] <= now:
            starting.pop(0)
            ready += 1
        assert ready + len(starting) == desired  # every paid replica is ready or starting
        points.append(Point(now, qps, desired, ready))
        if progress is not None:
            progress(i + 1, n)

    fixed_n = max(policy.min_replicas, policy.replicas_needed(trace.peak_qps))
    fixed_points = [Point(p.at, p.qps, fixed_n, fixed_n) for p in points]
    args = (policy.capacity_rps, tick, config.gpus_per_replica, config.gpu_hour_usd)
    return SimulationReport(
        trace=trace.name,
        capacity_rps=policy.capacity_rps,
        startup_s=config.startup_s,
        gpu_hour_usd=config.gpu_hour_usd,
        gpus_per_replica=config.gpus_per_replica,
        timezone=policy.timezone,
        peak_qps=trace.peak_qps,
        total_requests=sum(p.qps * tick for p in points),
        points=tuple(points),
        policy=_totals(points, *args),
        fixed=_totals(fixed_points, *args),
        fixed_replicas=fixed_n,
        scale_events=events,
        config={"policy": asdict(policy),
                "simulation": {k: v for k, v in asdict(config).items() if k != "policy"}},
    )
