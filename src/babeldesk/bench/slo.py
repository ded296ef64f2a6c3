"""The latency SLO of a load run, judging one run against it, and the search for the
highest open-loop rate that still meets it (``babeldesk bench --search``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from babeldesk.bench.loadgen import RunResult
from babeldesk.errors import ConfigError


@dataclass(frozen=True)
class Slo:
    """A run meets the SLO when its ``quantile`` latency (``metric``: end-to-end latency or
    TTFT) is at most ``target_ms``, at most ``max_error_share`` of requests failed, and it
    completed at least ``min_achieved`` of the offered rate."""

    target_ms: float = 200.0
    quantile: float = 0.99
    metric: str = "latency"  # "latency" | "ttft"
    max_error_share: float = 0.01
    min_achieved: float = 0.9

    def __post_init__(self) -> None:
        if self.target_ms <= 0:
            raise ConfigError("--slo-ms", "must be > 0")
        if not 0 < self.quantile < 1:
            raise ConfigError("--slo-quantile", "must be in (0, 1)")
        if self.metric not in ("latency", "ttft"):
            raise ConfigError("--slo-metric", "must be latency or ttft")


@dataclass(frozen=True, slots=True)
class Trial:
    rate: float  # offered requests/s
    achieved_rps: float
    latency_ms: float | None  # the SLO metric at the SLO quantile; None: nothing answered
    error_share: float
    met: bool


def judge(run: RunResult, slo: Slo) -> Trial:
    """Does one open-loop run meet the SLO?"""
    n = len(run.results)
    ok = [r for r in run.results if r.ok]
    values = [(r.ttft_s if slo.metric == "ttft" else r.latency_s) for r in ok]
    q = float(np.quantile(np.asarray(values), slo.quantile)) * 1000 if values else None
    errors = (n - len(ok)) / n if n else 1.0
    achieved = len(ok) / run.wall_s if run.wall_s > 0 else 0.0
    offered = run.offered_rps or achieved
    met = (q is not None and q <= slo.target_ms and errors <= slo.max_error_share
           and achieved >= slo.min_achieved * offered)
    return Trial(offered, achieved, q, errors, met)


async def slo_search(run_at: Callable[[float], Awaitable[Trial]], *, start_rate: float,
                     max_rate: float, max_trials: int = 8,
                     tolerance: float = 0.1) -> tuple[float | None, list[Trial]]:
    """Highest rate meeting the SLO: double from ``start_rate`` until a trial fails (or
    ``max_rate``), then bisect between the last pass and the first failure until they are
    within ``tolerance`` (relative) or ``max_trials`` ran. Returns (rate or None, trials)."""
    if start_rate <= 0 or max_rate < start_rate:
        raise ConfigError("--search", "need 0 < start rate <= max rate")
    trials: list[Trial] = []
    lo: float | None = None  # highest passing rate
    hi: float | None = None  # lowest failing rate
    rate = start_rate
    while len(trials) < max_trials:
        t = await run_at(rate)
        trials.append(t)
        if t.met:
            lo = rate
            if hi is None:
                if rate >= max_rate:
                    break
                rate = min(rate * 2, max_rate)
                continue
        else:
            hi = rate
            if lo is None:
                rate = rate / 2  # even the start failed: halve down
                if rate < start_rate / 64:
                    break
                continue
        assert lo is not None and hi is not None
        if hi / lo <= 1 + tolerance:
            break
        rate = (lo + hi) / 2
    return lo, trials
