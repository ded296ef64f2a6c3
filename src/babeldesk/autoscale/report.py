"""Simulator report: a rich table, and a PNG of demand vs capacity over the day."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from rich.table import Table

from babeldesk.autoscale.simulate import SimulationReport
from babeldesk.errors import ConfigError


def report_table(report: SimulationReport) -> Table:
    """Policy vs the fixed fleet sized for the peak."""
    table = Table(title=f"Autoscaling simulation: {report.trace}")
    table.add_column("")
    table.add_column("policy", justify="right")
    table.add_column(f"fixed fleet ({report.fixed_replicas})", justify="right")
    p, f = report.policy, report.fixed
    rows = [
        ("replicas (min-max)", f"{p.min_replicas}-{p.max_replicas}",
         f"{f.min_replicas}-{f.max_replicas}"),
        (f"GPU hours ({report.gpus_per_replica} GPU/replica)", f"{p.gpu_hours:.1f}",
         f"{f.gpu_hours:.1f}"),
        (f"cost at ${report.gpu_hour_usd:.2f}/GPU-hour", f"${p.cost_usd:,.2f}",
         f"${f.cost_usd:,.2f}"),
        ("minutes at SLO risk", f"{p.minutes_at_risk:g}", f"{f.minutes_at_risk:g}"),
        ("requests beyond capacity",
         f"{p.requests_at_risk:,.0f} ({p.requests_at_risk / max(report.total_requests, 1):.2%})",
         f"{f.requests_at_risk:,.0f}"),
    ]
    for row in rows:
        table.add_row(*row)
    table.caption = (
        f"capacity {report.capacity_rps:g} rps/replica, start-up {report.startup_s:g} s, "
        f"peak {report.peak_qps:g} rps, {report.scale_events} scale events; "
        f"saved {report.gpu_hours_saved:.1f} GPU hours ({report.saved_fraction:.0%}), "
        f"${report.cost_saved_usd:,.2f}"
    )
    return table


def write_png(report: SimulationReport, path: Path) -> Path:
    """Demand and capacity (ready and paid) over local time; minutes at risk shaded."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError as exc:  # the `plot` extra
        raise ConfigError("plot", "needs matplotlib: pip install 'babeldesk[plot]'") from exc

    zone = ZoneInfo(report.timezone)
    # matplotlib plots naive datetimes; use the local wall clock of the policy's zone
    xs = [datetime.fromtimestamp(p.at, zone).replace(tzinfo=None) for p in report.points]
    cap = report.capacity_rps
    demand = [p.qps for p in report.points]
    ready_cap = [p.ready * cap for p in report.points]
    paid_cap = [p.desired * cap for p in report.points]
    fixed_cap = [report.fixed_replicas * cap] * len(xs)
    risk = [d > r + 1e-9 for d, r in zip(demand, ready_cap)]

    fig, (ax, axr) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.2]})
    ax.plot(xs, demand, color="#1f3b73", lw=1.2, label="offered load (req/s)")
    ax.step(xs, paid_cap, where="post", color="#e08a00", lw=1.0, ls="--",
            label="capacity paid for (replicas asked for)")
    ax.step(xs, ready_cap, where="post", color="#2a9d4a", lw=1.6,
            label="capacity serving (ready replicas)")
    ax.plot(xs, fixed_cap, color="#888888", lw=1.0, ls=":",
            label=f"fixed fleet for the peak ({report.fixed_replicas} replicas)")
    ax.fill_between(xs, demand, ready_cap, where=risk, step="post", color="#d62728",
                    alpha=0.35, label=f"SLO at risk ({report.policy.minutes_at_risk:g} min)")
    ax.set_ylabel("requests / s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(
        f"{report.trace}: {report.policy.gpu_hours:.0f} vs {report.fixed.gpu_hours:.0f} "
        f"GPU hours (saved {report.saved_fraction:.0%}), "
        f"{report.policy.minutes_at_risk:g} min at risk", fontsize=10)

    axr.step(xs, [p.desired for p in report.points], where="post", color="#e08a00",
             lw=1.0, ls="--", label="asked for")
    axr.step(xs, [p.ready for p in report.points], where="post", color="#2a9d4a", lw=1.4,
             label="ready")
    axr.set_ylabel("replicas")
    axr.set_ylim(bottom=0)
    axr.grid(alpha=0.3)
    axr.legend(loc="upper left", fontsize=8)
    axr.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    axr.set_xlabel(f"local time ({report.timezone})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
