"""Reports of ``babeldesk cost``: a rich table, the JSON file and the PNG (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from babeldesk.bench.cost import CostReport


def render_table(report: CostReport, currency: str = "$") -> Any:
    """A ``rich.table.Table``: one row per fleet and scenario, narrow enough for 80
    columns (replica-hours and the full scenario names are in the JSON)."""
    from rich.table import Table

    table = Table(title="babeldesk cost")
    table.add_column("fleet")
    table.add_column("KB/cache", justify="right")
    table.add_column("off-peak")
    table.add_column("replicas\npeak/off", justify="right")
    table.add_column("per 1k\nrequests", justify="right")
    table.add_column("per QPS\nmonth", justify="right")
    table.add_column("per month", justify="right")
    rows = report.rows
    for i, r in enumerate(rows):
        table.add_row(
            r.fleet if i == 0 or rows[i - 1].fleet != r.fleet else "",
            f"{r.kb_share:.0%}", "scaled" if r.scale_down else "fixed",
            f"{r.replicas_peak}/{r.replicas_off_peak}",
            f"{currency}{r.cost_per_1k_requests:,.4f}", f"{currency}{r.cost_per_qps_month:,.2f}",
            f"{currency}{r.cost_per_month:,.2f}",
            end_section=i + 1 < len(rows) and rows[i + 1].fleet != r.fleet,
        )
    return table


def write_json(report: CostReport, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return p


def plot(report: CostReport, path: str | Path, currency: str = "$") -> Path:
    """Grouped bar chart of monthly cost: one group per fleet, one bar per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = [f.name for f in report.fleets]
    scenarios = list(dict.fromkeys(r.scenario for r in report.rows))
    width = 0.8 / len(scenarios)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(fleets) + 2), 4.5))
    for i, scenario in enumerate(scenarios):
        by_fleet = {r.fleet: r for r in report.rows if r.scenario == scenario}
        xs = [j + (i - (len(scenarios) - 1) / 2) * width for j in range(len(fleets))]
        ys = [by_fleet[f].cost_per_month for f in fleets]
        bars = ax.bar(xs, ys, width, label=scenario)
        ax.bar_label(bars, labels=[str(by_fleet[f].replicas_peak) for f in fleets],
                     fontsize=7, padding=2)
    ax.set_xticks(range(len(fleets)), fleets)
    ax.set_ylabel(f"cost per month ({currency})")
    t = report.traffic
    ax.set_title(f"{t.requests_per_day:,.0f} requests/day, peak {t.peak_rps:.2f} req/s "
                 "(bar labels: replicas at peak)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
