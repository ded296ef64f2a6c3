"""``babeldesk report``: resolution numbers per language from the session store."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from babeldesk.cli.common import ConfigOpt, SessionsOpt, app, fail, load_cli_config

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str, name: str) -> float:
    """``90m``, ``24h``, ``7d`` -> seconds."""
    m = _DURATION.match(value.strip())
    if not m:
        fail(f"--{name}: a duration such as 30m, 24h or 7d, not {value!r}")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_time(value: str, name: str, now: float) -> float:
    """A Unix time, an ISO date / date-time (UTC unless it names a zone), or a duration
    before ``now`` (``24h``: a day ago)."""
    v = value.strip()
    if _DURATION.match(v):
        return now - parse_duration(v, name)
    try:
        return float(v)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        fail(f"--{name}: a Unix time, an ISO date-time or a duration ago (24h), not {value!r}")
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def report_table(rows: list[Any], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("language", "conversations", "involvement", "handoff", "resolved confirmed",
                "resolved assumed", "automation", "open"):
        table.add_column(col, justify="left" if col == "language" else "right")
    for r in rows:
        table.add_row(r.language, str(r.conversations), _pct(r.involvement_rate),
                      _pct(r.handoff_rate), _pct(r.confirmed_rate), _pct(r.assumed_rate),
                      _pct(r.automation_rate), str(r.open))
    return table


def write_png(rows: list[Any], path: Path, title: str) -> Path:
    """Grouped bars per language: involvement, handoff, confirmed, assumed, automation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--png needs matplotlib: pip install 'babeldesk[plot]'")
    series = [("involvement", "involvement_rate", "#1f3b73"),
              ("handoff", "handoff_rate", "#c0392b"),
              ("confirmed", "confirmed_rate", "#27ae60"), ("assumed", "assumed_rate", "#82c99b"),
              ("automation", "automation_rate", "#e08a00")]
    width = 0.16
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.5))
    for i, (label, attr, color) in enumerate(series):
        xs = [j + (i - 2) * width for j in range(len(rows))]
        ax.bar(xs, [100 * (getattr(r, attr) or 0.0) for r in rows], width, label=label,
               color=color)
    ax.set_xticks(range(len(rows)), [f"{r.language}\n({r.conversations})" for r in rows])
    ax.set_ylabel("% (resolution: of involved conversations)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@app.command("report")
def report(
    config: Optional[Path] = ConfigOpt,
    sessions: Optional[str] = SessionsOpt,
    since: str = typer.Option("24h",
                              help="From: Unix time, ISO date-time (UTC) or a duration ago."),
    until: Optional[str] = typer.Option(None, help="Until (exclusive); default: now."),
    window: str = typer.Option(
        "24h", help="No message for this long after an answer = assumed resolved."),
    at: Optional[str] = typer.Option(None, help="Evaluate as of this time (default: now)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows as JSON here."),
    png: Optional[Path] = typer.Option(None, help="Write a bar chart here (needs matplotlib)."),
) -> None:
    """Involvement, handoff, resolution (confirmed, assumed) and automation rates per
    language, for conversations that started in a time range (docs/agents.md)."""
    from rich.console import Console

    from babeldesk.config import Config
    from babeldesk.errors import BabeldeskError
    from babeldesk.store import open_session_store
    from babeldesk.support.resolution import collect, summarize

    cfg = load_cli_config(config, store={"sessions_url": sessions})
    assert isinstance(cfg, Config)
    now = parse_time(at, "at", time.time()) if at else time.time()
    start = parse_time(since, "since", now)
    end = parse_time(until, "until", now) if until else now
    window_s = parse_duration(window, "window")
    if end <= start:
        fail("--until must be after --since")

    async def run() -> list[Any]:
        store = open_session_store(cfg.store)
        try:
            return summarize(await collect(store, start, end, now, window_s))
        finally:
            await store.close()

    try:
        rows = asyncio.run(run())
    except BabeldeskError as exc:
        fail(exc.message)
    fmt = "%Y-%m-%d %H:%M UTC"
    title = (f"conversations {datetime.fromtimestamp(start, timezone.utc).strftime(fmt)} - "
             f"{datetime.fromtimestamp(end, timezone.utc).strftime(fmt)}, window {window}")
    console = Console(width=120)
    console.print(report_table(rows, title))
    if json_out is not None:
        json_out.write_text(json.dumps({"since": start, "until": end, "at": now,
                                        "window_s": window_s,
                                        "rows": [r.to_dict() for r in rows]}, indent=1) + "\n")
        console.print(f"json: {json_out}")
    if png is not None:
        console.print(f"png: {write_png(rows, png, title)}")
