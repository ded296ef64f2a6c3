"""Cost model: hand-computed fleets, bench result parsing, inputs from YAML and flags,
and the real `babeldesk cost` command writing its JSON and PNG."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from babeldesk.bench.cost import (
    DAYS_PER_MONTH,
    Fleet,
    Plan,
    Traffic,
    build_inputs,
    estimate,
    estimate_row,
    fleet_from_bench,
    parse_fleet_spec,
)
from babeldesk.errors import ConfigError
from babeldesk.types import BenchResult, parse_bench_result

BIN = Path(sys.executable).parent / "babeldesk"

# 864,000 requests/day = 10 req/s on average, peak 30 req/s, 8 quiet hours at 2 req/s
TRAFFIC = Traffic(requests_per_day=864_000, peak_to_average=3, off_peak_hours=8,
                  off_peak_load=0.2)
# 5 model req/s per replica at 80% -> 4 req/s planned per replica
FLEET = Fleet("cpu", price_per_hour=0.5, capacity_rps=5)


def test_traffic_profile_adds_up_to_the_day() -> None:
    t = TRAFFIC
    assert t.average_rps == pytest.approx(10)
    assert t.peak_rps == pytest.approx(30)
    assert t.off_peak_rps == pytest.approx(2)
    day = (t.on_peak_average_rps * t.on_peak_hours + t.off_peak_rps * t.off_peak_hours) * 3600
    assert day == pytest.approx(t.requests_per_day)


def test_traffic_rejects_a_peak_below_the_on_peak_average() -> None:
    # 20 quiet hours at 0.1x leave 4 h carrying ~5.5x the average: a 3x peak cannot be
    with pytest.raises(ConfigError) as err:
        Traffic(864_000, peak_to_average=3, off_peak_hours=20, off_peak_load=0.1)
    assert err.value.key == "traffic.peak_to_average"
    with pytest.raises(ConfigError, match="off_peak_hours"):
        Traffic(1000, off_peak_hours=24)


def test_fixed_fleet_by_hand() -> None:
    row = estimate_row(FLEET, TRAFFIC, Plan(), kb_share=0.0, scale_down=False)
    assert (row.replicas_peak, row.replicas_off_peak) == (8, 8)  # ceil(30 / 4)
    assert row.replica_hours_per_day == 192
    assert row.cost_per_day == pytest.approx(96.0)
    assert row.cost_per_1k_requests == pytest.approx(96 / 864)
    assert row.cost_per_month == pytest.approx(96 * DAYS_PER_MONTH)
    assert row.cost_per_qps_month == pytest.approx(96 * DAYS_PER_MONTH / 30)


def test_scale_down_and_kb_share_by_hand() -> None:
    down = estimate_row(FLEET, TRAFFIC, Plan(), kb_share=0.0, scale_down=True)
    assert (down.replicas_peak, down.replicas_off_peak) == (8, 1)  # ceil(2 / 4) = 1
    assert down.cost_per_day == pytest.approx((8 * 16 + 1 * 8) * 0.5)
    kb = estimate_row(FLEET, TRAFFIC, Plan(), kb_share=0.75, scale_down=False)
    assert kb.replicas_peak == 2  # 7.5 model req/s at peak
    assert kb.cost_per_day == pytest.approx(2 * 24 * 0.5)
    both = estimate_row(FLEET, TRAFFIC, Plan(), kb_share=0.75, scale_down=True)
    assert (both.replicas_peak, both.replicas_off_peak) == (2, 1)
    assert both.cost_per_day == pytest.approx((2 * 16 + 8) * 0.5)


def test_min_replicas_and_utilization() -> None:
    row = estimate_row(FLEET, TRAFFIC, Plan(utilization=1.0, min_replicas=3), kb_share=0.0,
                       scale_down=True)
    assert (row.replicas_peak, row.replicas_off_peak) == (6, 3)
    # exactly at capacity: no extra replica from float rounding
    exact = Traffic(requests_per_day=4 * 86_400, peak_to_average=1, off_peak_hours=0)
    assert Plan(utilization=0.8).replicas(exact.peak_rps, 5) == 1
    with pytest.raises(ConfigError, match="plan.utilization"):
        Plan(utilization=0)
    with pytest.raises(ConfigError, match="plan.min_replicas"):
        Plan(min_replicas=0)


def test_estimate_compares_fleets_side_by_side() -> None:
    gpu = Fleet("gpu", price_per_hour=2.0, capacity_rps=40)
    report = estimate([FLEET, gpu], TRAFFIC, Plan(without_model_share=0.75))
    assert [(r.fleet, r.kb_share, r.scale_down) for r in report.rows] == [
        (f, s, d) for f in ("cpu", "gpu") for s in (0.0, 0.75) for d in (False, True)]
    by = {(r.fleet, r.kb_share, r.scale_down): r for r in report.rows}
    assert by[("gpu", 0.0, False)].replicas_peak == 1  # 30 req/s < 32 planned
    assert by[("gpu", 0.0, False)].cost_per_day == pytest.approx(48.0)
    # every row costs at most its fixed, no-KB counterpart
    for (fleet, share, down), row in by.items():
        assert row.cost_per_day <= by[(fleet, 0.0, False)].cost_per_day
    text = "\n".join(report.assumptions)
    for needle in ("864,000 requests/day", "30.000 requests/s", "8 h/day", "80%",
                   "75% of messages", "30.4375", "fleet cpu: 0.5 per replica-hour",
                   "fleet gpu: 2 per replica-hour"):
        assert needle in text, needle
    data = json.loads(json.dumps(report.to_dict()))
    assert len(data["rows"]) == 8 and data["traffic"]["peak_rps"] == pytest.approx(30)
    with pytest.raises(ConfigError, match="differ"):
        estimate([FLEET, FLEET], TRAFFIC, Plan())


def test_without_a_share_only_no_kb_rows() -> None:
    report = estimate([FLEET], TRAFFIC, Plan())
    assert {r.kb_share for r in report.rows} == {0.0} and len(report.rows) == 2


def test_parse_bench_result() -> None:
    b = parse_bench_result({"summary": {"achieved_rps": 12.0, "slo_rps": 8.0,
                                         "source_shares": {"knowledge_base": 0.6, "cache": 0.1,
                                                           "model": 0.25, "handoff": 0.05}}})
    assert b.rps == 8.0 and b.without_model_share == pytest.approx(0.75)
    assert b.model_rps == pytest.approx(2.0)
    only = parse_bench_result({"achieved_rps": 3, "without_model_share": 0.5})
    assert only.rps == 3 and only.model_rps == pytest.approx(1.5)
    assert parse_bench_result({"achieved_rps": 3}).model_rps == 3  # against a worker
    for bad, key in [({}, "achieved_rps"), ({"achieved_rps": 0}, "achieved_rps"),
                     ({"achieved_rps": True}, "achieved_rps"),
                     ({"achieved_rps": 1, "slo_rps": "fast"}, "slo_rps"),
                     ({"achieved_rps": 1, "source_shares": {"cache": 1}}, "source_shares"),
                     ({"achieved_rps": 1, "without_model_share": 1}, "without_model_share"),
                     ([], "bench result")]:
        with pytest.raises(ConfigError) as err:
            parse_bench_result(bad)
        assert key in err.value.key


def test_fleet_from_bench_uses_model_requests() -> None:
    b = BenchResult(achieved_rps=12, slo_rps=8, without_model_share=0.75, source="run.json")
    f = fleet_from_bench("cpu", 0.2, b)
    assert f.capacity_rps == pytest.approx(2.0)
    assert "run.json" in f.capacity_source and "slo_rps 8" in f.capacity_source
    assert f.measured_without_model_share == 0.75


def test_parse_fleet_spec() -> None:
    f = parse_fleet_spec("gpu-l4:price=0.8,rps=20")
    assert (f.name, f.price_per_hour, f.capacity_rps) == ("gpu-l4", 0.8, 20)
    for bad in ["gpu", "gpu:price=1", "gpu:rps=2", "gpu:price=1,rps=2,bench=x.json",
                "gpu:price=1,rps", "gpu:price=-1,rps=2", "gpu:price=1,rps=0",
                "gpu:price=1,rps=2,gpus=4"]:
        with pytest.raises(ConfigError):
            parse_fleet_spec(bad)


def test_build_inputs_from_yaml_and_flags(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "cpu.json").write_text(json.dumps(
        {"achieved_rps": 10, "slo_rps": 6, "source_shares": {"model": 0.4, "knowledge_base": 0.6}}))
    data = yaml.safe_load("""
traffic: {requests_per_day: 100000, peak_to_average: 4}
plan: {utilization: 0.7}
fleets:
  - {name: cpu, price: 0.2, bench: runs/cpu.json}
  - {name: gpu, price_per_hour: 1.5, capacity_rps: 30}
""")
    fleets, traffic, plan = build_inputs(
        data, fleet_specs=["big:price=4,rps=90"], base_dir=tmp_path,
        traffic={"requests_per_day": None, "peak_to_average": 2.5}, plan={"min_replicas": 2})
    assert [f.name for f in fleets] == ["cpu", "gpu", "big"]
    assert fleets[0].capacity_rps == pytest.approx(2.4)  # 6 req/s x model share 0.4
    assert traffic.requests_per_day == 100_000 and traffic.peak_to_average == 2.5
    assert plan.utilization == 0.7 and plan.min_replicas == 2
    assert plan.without_model_share == pytest.approx(0.6)  # measured by the cpu bench
    assert "fleet cpu" in plan.share_source
    _, _, given = build_inputs(data, base_dir=tmp_path, plan={"without_model_share": 0.9})
    assert given.without_model_share == 0.9
    with pytest.raises(ConfigError, match="requests_per_day"):
        build_inputs({"fleets": data["fleets"]}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="traffic.peak"):
        build_inputs({"traffic": {"requests_per_day": 1, "peak": 3}})
    with pytest.raises(ConfigError, match="cannot read"):
        build_inputs(data)  # bench path relative to a folder it is not in


def test_cli_writes_table_json_and_png(tmp_path: Path) -> None:
    (tmp_path / "bench.json").write_text(json.dumps(
        {"summary": {"achieved_rps": 4.0, "slo_rps": 3.0, "without_model_share": 0.8}}))
    out = tmp_path / "report"
    res = subprocess.run(
        [str(BIN), "cost", "--requests-per-day", "864000", "--peak-to-average", "3",
         "--fleet", f"cpu:price=0.25,bench={tmp_path / 'bench.json'}",
         "--fleet", "gpu:price=2.5,rps=40", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "COLUMNS": "120"})
    assert res.returncode == 0, res.stderr
    assert "Assumptions" in res.stdout and "80% of messages never reach the model" in res.stdout
    report = json.loads((out / "cost.json").read_text())
    assert (out / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {(r["fleet"], r["kb_share"], r["scale_down"]): r for r in report["rows"]}
    # cpu: 3 req/s x 0.2 model share = 0.6 model req/s per replica, 0.48 planned
    assert rows[("cpu", 0.0, False)]["replicas_peak"] == math.ceil(30 / 0.48)
    assert rows[("cpu", 0.8, False)]["replicas_peak"] == math.ceil(6 / 0.48)
    assert rows[("gpu", 0.0, False)]["replicas_peak"] == 1
    assert f"${rows[('gpu', 0.0, False)]['cost_per_month']:,.2f}" in res.stdout


def test_cli_fails_naming_the_input(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(BIN), "cost", "--requests-per-day", "1000", "--fleet", "cpu:price=1",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2
    assert "--fleet cpu" in res.stderr and "rps=" in res.stderr
    assert not (tmp_path / "cost.json").exists()
