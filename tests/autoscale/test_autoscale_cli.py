"""``babeldesk autoscale simulate`` end to end through the real CLI: a CSV trace or a
built-in profile in, a table, a JSON report and a PNG out."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from babeldesk.cli import app


def test_simulate_csv_trace_writes_json_and_png(tmp_path: Path) -> None:
    rows = ["timestamp,qps"]
    # 2 hours at noon, Berlin time: 5 req/s, then 30 req/s for an hour
    for minute in range(120):
        rows.append(f"2026-06-15T{12 + minute // 60:02d}:{minute % 60:02d}:00,"
                    f"{5 if minute < 60 else 30}")
    trace = tmp_path / "trace.csv"
    trace.write_text("\n".join(rows) + "\n")
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"achieved_rps": 12.0, "slo_rps": 10.0}))
    out, png = tmp_path / "report.json", tmp_path / "day.png"
    result = CliRunner().invoke(app, [
        "autoscale", "simulate", "--trace", str(trace), "--bench", str(bench),
        "--timezone", "Europe/Berlin", "--startup-s", "120", "--json", str(out),
        "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "minutes at SLO risk" in result.output
    report = json.loads(out.read_text())
    assert report["capacity_rps"] == 10.0 and report["fixed_replicas"] == 3
    assert len(report["points"]) == 120
    # 30 req/s on 1 replica (8 req/s at 80%): 10 sustained minutes, then 2 minutes start-up
    assert report["policy"]["minutes_at_risk"] == 12
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_simulate_needs_exactly_one_capacity() -> None:
    runner = CliRunner()
    none = runner.invoke(app, ["autoscale", "simulate"])
    assert none.exit_code == 2 and "--capacity-rps" in none.output
    unknown = runner.invoke(app, ["autoscale", "simulate", "--capacity-rps", "4",
                                  "--profile", "blackfriday"])
    assert unknown.exit_code == 2 and "diurnal" in unknown.output
