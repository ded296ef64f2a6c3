"""What a deployment costs: replicas at peak, cost per 1,000 requests and per QPS, monthly
cost, for several hardware fleets side by side, each with and without the share of
messages answered without the model (knowledge base, cache, handoff) and with and
without scaling down off-peak.

Inputs are a daily traffic profile, a price per replica-hour and a capacity per replica,
given directly or read from a ``babeldesk bench`` result. Everything is pure and every
assumption the numbers rest on is listed in ``CostReport.assumptions``.

Bench results are read with ``babeldesk.types.parse_bench_result`` (the autoscaler reads
them with the same function; the keys are described there).

``capacity_rps`` of a fleet is always *model-answered* requests/s per replica at the SLO.
A bench of a mixed workload (with knowledge-base hits) carried ``rps * model_share`` model
requests per replica; a bench straight against a worker has model share 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from babeldesk.errors import ConfigError
from babeldesk.types import BenchResult, load_bench_result

HOURS_PER_DAY = 24.0
DAYS_PER_MONTH = 365.25 / 12  # 30.4375, the average month
SECONDS_PER_DAY = 86_400.0


def _number(key: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within bounds, or ``ConfigError`` naming ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(key, f"must be finite, got {value!r}")
    if low is not None and (x < low or (low_open and x == low)):
        raise ConfigError(key, f"must be {'>' if low_open else '>='} {low:g}, got {x:g}")
    if high is not None and (x > high or (high_open and x == high)):
        raise ConfigError(key, f"must be {'<' if high_open else '<='} {high:g}, got {x:g}")
    return x


# --- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """A day of support traffic. Off-peak hours run at ``off_peak_load`` x the daily
    average; the remaining hours carry the rest of the day's requests and peak at
    ``peak_to_average`` x the daily average."""

    requests_per_day: float
    peak_to_average: float = 3.0
    off_peak_hours: float = 8.0  # hours/day with low traffic (night)
    off_peak_load: float = 0.2  # off-peak rate / daily average rate

    def __post_init__(self) -> None:
        _number("traffic.requests_per_day", self.requests_per_day, low=0, low_open=True)
        _number("traffic.peak_to_average", self.peak_to_average, low=1)
        _number("traffic.off_peak_hours", self.off_peak_hours, low=0, high=24, high_open=True)
        _number("traffic.off_peak_load", self.off_peak_load, low=0, high=1)
        if self.peak_rps < self.on_peak_average_rps * (1 - 1e-9):
            raise ConfigError(
                "traffic.peak_to_average",
                f"{self.peak_to_average:g} is below the on-peak average "
                f"({self.on_peak_average_rps / self.average_rps:.2f}x the daily average) that "
                "off_peak_hours and off_peak_load leave")

    @property
    def average_rps(self) -> float:
        return self.requests_per_day / SECONDS_PER_DAY

    @property
    def peak_rps(self) -> float:
        return self.average_rps * self.peak_to_average

    @property
    def off_peak_rps(self) -> float:
        return self.average_rps * self.off_peak_load

    @property
    def on_peak_hours(self) -> float:
        return HOURS_PER_DAY - self.off_peak_hours

    @property
    def on_peak_average_rps(self) -> float:
        off_requests = self.off_peak_rps * self.off_peak_hours * 3600
        return (self.requests_per_day - off_requests) / (self.on_peak_hours * 3600)


@dataclass(frozen=True)
class Fleet:
    """One hardware configuration: replicas of one kind, each ``price_per_hour`` and able
    to answer ``capacity_rps`` model requests/s within the SLO."""

    name: str
    price_per_hour: float  # currency units per replica-hour
    capacity_rps: float  # model-answered requests/s per replica at the SLO
    capacity_source: str = "given"
    measured_without_model_share: float | None = None  # from its bench result, if any

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("fleet.name", "must not be empty")
        _number(f"fleet {self.name}: price_per_hour", self.price_per_hour, low=0)
        _number(f"fleet {self.name}: capacity_rps", self.capacity_rps, low=0, low_open=True)


def fleet_from_bench(name: str, price_per_hour: float, bench: BenchResult) -> Fleet:
    rate = "slo_rps" if bench.slo_rps is not None else "achieved_rps (no SLO search in run)"
    share = bench.without_model_share or 0.0
    how = f"{bench.source}: {rate} {bench.rps:g}"
    if share:
        how += f" x model share {1 - share:.2f}"
    return Fleet(name, price_per_hour, bench.model_rps, how, bench.without_model_share)


def parse_fleet_spec(spec: str) -> Fleet:
    """``NAME:price=0.34,rps=3.1`` or ``NAME:price=0.8,bench=path.json`` -> ``Fleet``
    (a bench path is read relative to the working directory)."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ConfigError(
            "--fleet", f"{spec!r}: expected NAME:price=P,rps=R or NAME:price=P,bench=FILE")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError("--fleet", f"{spec!r}: {part!r} is not key=value")
        fields[key.strip()] = value.strip()
    return fleet_from_mapping(name, fields, key="--fleet")


def fleet_from_mapping(name: str, data: Mapping[str, Any], key: str = "fleets",
                       base_dir: Path | None = None) -> Fleet:
    """A fleet from a flag's or a YAML entry's fields: ``price`` (or ``price_per_hour``)
    and either ``rps`` (or ``capacity_rps``) or ``bench`` (relative to ``base_dir``)."""
    unknown = set(data) - {"name", "price", "price_per_hour", "rps", "capacity_rps", "bench"}
    if unknown:
        raise ConfigError(f"{key} {name}", f"unknown field(s): {', '.join(sorted(unknown))}")
    price = data.get("price", data.get("price_per_hour"))
    if price is None:
        raise ConfigError(f"{key} {name}: price", "missing (currency per replica-hour)")
    price_f = _number(f"{key} {name}: price", price, low=0)
    rps = data.get("rps", data.get("capacity_rps"))
    bench = data.get("bench")
    if (rps is None) == (bench is None):
        raise ConfigError(f"{key} {name}", "give exactly one of rps=<model requests/s per "
                          "replica> or bench=<bench result JSON>")
    if bench is not None:
        path = Path(str(bench))
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        return fleet_from_bench(name, price_f, load_bench_result(path))
    return Fleet(name, price_f, _number(f"{key} {name}: rps", rps, low=0, low_open=True),
                 "given on the command line" if key == "--fleet" else f"given in {key}")


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How replicas are counted."""

    utilization: float = 0.8  # plan replicas to run at most this share of capacity
    min_replicas: int = 1  # never fewer (availability)
    without_model_share: float = 0.0  # 0..1, used by the "with KB/cache" rows
    share_source: str = "given"  # where without_model_share came from (for the report)

    def __post_init__(self) -> None:
        _number("plan.utilization", self.utilization, low=0, high=1, low_open=True)
        if isinstance(self.min_replicas, bool) or not isinstance(self.min_replicas, int):
            raise ConfigError("plan.min_replicas", f"must be an integer, got {self.min_replicas!r}")
        _number("plan.min_replicas", self.min_replicas, low=1)
        _number("plan.without_model_share", self.without_model_share, low=0, high=1,
                high_open=True)

    def replicas(self, model_rps: float, capacity_rps: float) -> int:
        """Replicas to carry ``model_rps`` at ``utilization`` of each one's capacity."""
        need = model_rps / (capacity_rps * self.utilization)
        return max(self.min_replicas, math.ceil(need - 1e-9))


@dataclass(frozen=True)
class CostRow:
    fleet: str
    kb_share: float  # share of messages answered without the model in this row
    scale_down: bool  # off-peak hours run the off-peak replica count
    replicas_peak: int
    replicas_off_peak: int
    replica_hours_per_day: float
    cost_per_day: float
    cost_per_month: float
    cost_per_1k_requests: float
    cost_per_qps_month: float  # monthly cost / peak requests/s

    @property
    def scenario(self) -> str:
        kb = f"KB/cache {self.kb_share:.0%}" if self.kb_share else "no KB/cache"
        return kb + (", off-peak scale-down" if self.scale_down else ", fixed fleet")


@dataclass(frozen=True)
class CostReport:
    traffic: Traffic
    plan: Plan
    fleets: tuple[Fleet, ...]
    rows: tuple[CostRow, ...]
    assumptions: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "traffic": {**asdict(self.traffic), "average_rps": self.traffic.average_rps,
                        "peak_rps": self.traffic.peak_rps,
                        "off_peak_rps": self.traffic.off_peak_rps},
            "plan": asdict(self.plan),
            "fleets": [asdict(f) for f in self.fleets],
            "rows": [{**asdict(r), "scenario": r.scenario} for r in self.rows],
            "assumptions": list(self.assumptions),
            "days_per_month": DAYS_PER_MONTH,
        }


def estimate_row(fleet: Fleet, traffic: Traffic, plan: Plan, *, kb_share: float,
                 scale_down: bool) -> CostRow:
    model = 1.0 - kb_share  # share of messages that reach the model
    peak = plan.replicas(traffic.peak_rps * model, fleet.capacity_rps)
    off = plan.replicas(traffic.off_peak_rps * model, fleet.capacity_rps) if scale_down else peak
    off = min(off, peak)
    hours = peak * traffic.on_peak_hours + off * traffic.off_peak_hours  # replica-hours/day
    per_day = hours * fleet.price_per_hour
    per_month = per_day * DAYS_PER_MONTH
    return CostRow(
        fleet=fleet.name, kb_share=kb_share, scale_down=scale_down,
        replicas_peak=peak, replicas_off_peak=off, replica_hours_per_day=hours,
        cost_per_day=per_day, cost_per_month=per_month,
        cost_per_1k_requests=per_day / traffic.requests_per_day * 1000,
        cost_per_qps_month=per_month / traffic.peak_rps,
    )


def estimate(fleets: list[Fleet], traffic: Traffic, plan: Plan) -> CostReport:
    """Four rows per fleet: {no KB/cache, with KB/cache share} x {fixed, scale-down}."""
    if not fleets:
        raise ConfigError("--fleet", "give at least one fleet")
    names = [f.name for f in fleets]
    if len(set(names)) != len(names):
        raise ConfigError("--fleet", f"fleet names must differ: {names}")
    shares = [0.0] + ([plan.without_model_share] if plan.without_model_share else [])
    rows = [
        estimate_row(f, traffic, plan, kb_share=s, scale_down=down)
        for f in fleets for s in shares for down in (False, True)
    ]
    return CostReport(traffic, plan, tuple(fleets), tuple(rows),
                      tuple(assumptions(fleets, traffic, plan)))


def assumptions(fleets: list[Fleet], traffic: Traffic, plan: Plan) -> list[str]:
    t = traffic
    if plan.without_model_share:
        share = (f"knowledge base / cache / handoff share: {plan.without_model_share:.0%} of "
                 f"messages never reach the model ({plan.share_source})")
    else:
        share = (f"knowledge base / cache share: 0 ({plan.share_source}; pass --kb-share or a "
                 "bench result with source_shares); only no-KB rows shown")
    out = [
        (f"traffic: {t.requests_per_day:,.0f} requests/day = {t.average_rps:.3f} requests/s "
         "on average"),
        (f"peak: {t.peak_to_average:g} x average = {t.peak_rps:.3f} requests/s; the fleet "
         f"holds its peak size for the {t.on_peak_hours:g} on-peak hours"),
        (f"off-peak: {t.off_peak_hours:g} h/day at {t.off_peak_load:g} x average = "
         f"{t.off_peak_rps:.3f} requests/s (flat); the on-peak hours carry the rest "
         f"({t.on_peak_average_rps:.3f} requests/s on average)"),
        (f"replicas run at most {plan.utilization:.0%} of their SLO capacity (burst headroom), "
         f"never fewer than {plan.min_replicas}"),
        ("capacity = model-answered requests/s per replica within the latency SLO; messages "
         "answered from the knowledge base or cache are assumed free on the model fleet "
         "(the CPU gateway tier that answers them is not costed here)"),
        share,
        (f"month = {DAYS_PER_MONTH:g} days; cost per QPS = monthly cost / peak requests/s; "
         "prices are per replica-hour, billed for every hour a replica runs"),
    ]
    for f in fleets:
        out.append(f"fleet {f.name}: {f.price_per_hour:g} per replica-hour, "
                   f"{f.capacity_rps:.3g} model requests/s per replica ({f.capacity_source})")
    return out


# --- inputs from a YAML file and flags ----------------------------------------------------

TRAFFIC_KEYS = ("requests_per_day", "peak_to_average", "off_peak_hours", "off_peak_load")
PLAN_KEYS = ("utilization", "min_replicas", "without_model_share")


def build_inputs(
    data: Mapping[str, Any] | None = None,
    *,
    fleet_specs: list[str] | tuple[str, ...] = (),
    traffic: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
    base_dir: Path | None = None,
) -> tuple[list[Fleet], Traffic, Plan]:
    """YAML ``data`` (sections ``traffic``, ``plan``, ``fleets``) < flag values (``None``
    = not given). The KB/cache share defaults to the first fleet whose bench measured it."""
    data = data or {}
    if not isinstance(data, Mapping):
        raise ConfigError("cost file", "top level must be a mapping")
    unknown = set(data) - {"traffic", "plan", "fleets"}
    if unknown:
        raise ConfigError("cost file", f"unknown section(s): {', '.join(sorted(unknown))}")

    def merged(section: str, keys: tuple[str, ...],
               flags: Mapping[str, Any] | None) -> dict[str, Any]:
        values = dict(data.get(section) or {})
        for k in values:
            if k not in keys:
                raise ConfigError(f"{section}.{k}", "unknown key")
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        return values

    t = merged("traffic", TRAFFIC_KEYS, traffic)
    if "requests_per_day" not in t:
        raise ConfigError("traffic.requests_per_day", "missing (--requests-per-day)")
    traffic_obj = Traffic(**{k: _number(f"traffic.{k}", v) for k, v in t.items()})

    entries = data.get("fleets") or []
    if not isinstance(entries, list):
        raise ConfigError("fleets", "must be a list")
    fleets = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise ConfigError(f"fleets[{i}]", "must be a mapping with a name")
        fleets.append(fleet_from_mapping(str(entry["name"]), entry, base_dir=base_dir))
    fleets += [parse_fleet_spec(spec) for spec in fleet_specs]

    p = merged("plan", PLAN_KEYS, plan)
    if p.get("without_model_share") is None:
        measured = [f.measured_without_model_share for f in fleets
                    if f.measured_without_model_share is not None]
        measured_by = [f.name for f in fleets if f.measured_without_model_share is not None]
        p["without_model_share"] = measured[0] if measured else 0.0
        p["share_source"] = (f"measured by the bench of fleet {measured_by[0]}"
                             if measured else "not given")
    if "min_replicas" in p:
        m = _number("plan.min_replicas", p["min_replicas"], low=1)
        if m != int(m):
            raise ConfigError("plan.min_replicas", f"must be an integer, got {p['min_replicas']!r}")
        p["min_replicas"] = int(m)
    kwargs: dict[str, Any] = {
        k: (v if k in ("min_replicas", "share_source") else _number(f"plan.{k}", v))
        for k, v in p.items()}
    plan_obj = Plan(**kwargs)
    return fleets, traffic_obj, plan_obj
