"""The simulator, traces and the bench-capacity parser, on small real inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from babeldesk.autoscale.policy import PolicyConfig, Sample, decide
from babeldesk.autoscale.profiles import (
    Profile,
    Trace,
    builtin_trace,
    load_trace_csv,
    parse_trace_csv,
)
from babeldesk.autoscale.report import report_table, write_png
from babeldesk.autoscale.simulate import SimulationConfig, simulate
from babeldesk.errors import ConfigError
from babeldesk.types import load_bench_result, parse_bench_result

POLICY = PolicyConfig(capacity_rps=4.0, min_replicas=1, max_replicas=40)


# --- bench capacity ---------------------------------------------------------------------


def test_capacity_prefers_slo_rate() -> None:
    cap = parse_bench_result({"achieved_rps": 12.0, "slo_rps": 9.5, "model": "m"})
    assert cap.model_rps == 9.5 and cap.model == "m"
    assert parse_bench_result({"summary": {"achieved_rps": 3}}).model_rps == 3.0


def test_capacity_counts_model_requests_of_a_mixed_bench() -> None:
    # a bench through a gateway: 75% answered from the knowledge base / cache
    cap = parse_bench_result({"achieved_rps": 40.0, "without_model_share": 0.75})
    assert cap.model_rps == pytest.approx(10.0)
    cap = parse_bench_result({"summary": {"achieved_rps": 40.0, "slo_rps": 20.0,
                                            "source_shares": {"model": 0.5, "cache": 0.5}}})
    assert cap.model_rps == pytest.approx(10.0)


@pytest.mark.parametrize("data,key", [
    ({"achieved_rps": 5, "without_model_share": 1.0}, "model share"),
    ({"achieved_rps": 5, "without_model_share": "most"}, "without_model_share"),
    ({}, "achieved_rps"),
    ({"achieved_rps": "fast"}, "achieved_rps"),
    ({"achieved_rps": 0}, "achieved_rps"),
    ({"achieved_rps": True}, "achieved_rps"),
    ({"achieved_rps": 5, "slo_rps": -1}, "slo_rps"),
    ({"summary": [1]}, "summary"),
])
def test_capacity_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bench_result(data)
    assert key in err.value.message


def test_capacity_from_file(tmp_path: Path) -> None:
    f = tmp_path / "bench.json"
    f.write_text(json.dumps({"achieved_rps": 7.25, "extra": {"ignored": True}}))
    assert load_bench_result(f).model_rps == 7.25
    f.write_text("{not json")
    with pytest.raises(ConfigError):
        load_bench_result(f)


# --- traces ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", list(Profile))
def test_builtin_profile_is_a_local_day(profile: Profile) -> None:
    tr = builtin_trace(profile, peak_qps=40, timezone="Europe/Berlin", day=date(2026, 6, 15))
    assert len(tr.qps) == 1440 and tr.step_s == 60
    assert datetime.fromtimestamp(tr.start, ZoneInfo("Europe/Berlin")).hour == 0
    night = tr.qps[4 * 60]  # 04:00 local
    evening = max(tr.qps[20 * 60:21 * 60])
    assert night < 0.2 * evening
    assert builtin_trace(profile) == builtin_trace(profile)  # deterministic


def test_sale_profile_spikes_above_the_normal_day() -> None:
    normal = builtin_trace(Profile.DIURNAL, peak_qps=40)
    sale = builtin_trace(Profile.SALE, peak_qps=40)
    assert sale.peak_qps > 2 * normal.peak_qps
    assert sale.qps.index(sale.peak_qps) // 60 == 19


def test_csv_trace_iso_and_posix(tmp_path: Path) -> None:
    text = "timestamp,qps\n2026-06-15T00:00:00,1.5\n2026-06-15T00:01:00,2\n2026-06-15T00:02:00,0\n"
    tr = parse_trace_csv(text, timezone="Asia/Tokyo")
    assert tr.step_s == 60 and tr.qps == (1.5, 2.0, 0.0)
    assert tr.start == datetime(2026, 6, 15, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    assert tr.at(tr.start + 90) == 2.0 and tr.at(tr.start - 1) == 0.0
    f = tmp_path / "t.csv"
    f.write_text("timestamp,qps\n100,1\n130,2\n")
    assert load_trace_csv(f).step_s == 30


@pytest.mark.parametrize("text", [
    "time,load\n1,2\n2,3\n",  # wrong header
    "timestamp,qps\n0,1\n",  # one row
    "timestamp,qps\n0,1\n60,x\n",  # bad number
    "timestamp,qps\n0,1\n60,-2\n",  # negative
    "timestamp,qps\n0,1\n60,1\n200,1\n",  # uneven spacing
    "timestamp,qps\n60,1\n0,1\n",  # out of order
    "timestamp,qps\nyesterday,1\n0,1\n",  # bad time
])
def test_csv_trace_rejects_bad_input(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_trace_csv(text)


# --- simulation --------------------------------------------------------------------------


def flat(qps: float, minutes: int, start: float = 1_781_481_600.0) -> Trace:
    return Trace("flat", start, 60.0, (qps,) * minutes)


def test_flat_traffic_needs_no_scaling() -> None:
    rep = simulate(flat(10.0, 120), SimulationConfig(POLICY))  # 2026-06-15 00:00 UTC
    # starts at replicas_for(10) = ceil(10 / 3.2) = 4; 10 rps < 80% of 16: no scale-up,
    # and the off-peak halving is floored by what 10 rps needs at 80%
    assert {p.desired for p in rep.points} == {4}
    assert rep.policy.minutes_at_risk == 0
    assert rep.policy.gpu_hours == pytest.approx(8.0)
    assert rep.fixed_replicas == 3 and rep.fixed.gpu_hours == pytest.approx(6.0)


def test_step_up_is_at_risk_until_new_replicas_are_ready() -> None:
    noon = 1_781_524_800.0  # 2026-06-15 12:00 UTC: not off-peak
    tr = Trace("step", noon, 60.0, (4.0,) * 30 + (12.0,) * 60)
    cfg = SimulationConfig(POLICY, startup_s=300.0)
    rep = simulate(tr, cfg)
    # 12 rps on 2 replicas (8 rps) is at risk from minute 30; sustained for 10 minutes
    # -> decide at minute 40 (samples 30..40), ready 5 minutes later at minute 45
    first_up = next(i for i, p in enumerate(rep.points) if p.desired > 2)
    assert first_up == 40
    first_ready = next(i for i, p in enumerate(rep.points) if p.ready > 2)
    assert first_ready == 45
    assert rep.policy.minutes_at_risk == 15
    assert rep.policy.requests_at_risk == pytest.approx(15 * 60 * (12.0 - 8.0))
    assert rep.fixed.minutes_at_risk == 0


def test_simulator_decisions_match_decide_tick_by_tick() -> None:
    tr = builtin_trace(Profile.SALE, peak_qps=30)
    rep = simulate(tr, SimulationConfig(POLICY, startup_s=180))
    history: list[Sample] = []
    desired = rep.points[0].desired if rep.points else 0
    prev = POLICY.replicas_for(tr.qps[0])
    for p in rep.points:
        history.append(Sample(p.at, p.qps, prev))
        assert decide(history, p.at, POLICY) == p.desired
        prev = p.desired
    assert desired >= 1


def test_builtin_day_saves_gpu_hours_and_reports_risk(tmp_path: Path) -> None:
    rep = simulate(builtin_trace(Profile.SALE), SimulationConfig(POLICY))
    assert rep.policy.gpu_hours < rep.fixed.gpu_hours
    assert 0 < rep.saved_fraction < 1
    assert rep.policy.minutes_at_risk > 0  # the sale arrives faster than 10 min + start-up
    data = json.loads(json.dumps(rep.to_dict()))
    assert data["fixed_replicas"] == rep.fixed_replicas and len(data["points"]) == 1440
    png = write_png(rep, tmp_path / "day.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report_table(rep))
    text = console.export_text()
    assert "minutes at SLO risk" in text and f"{rep.policy.gpu_hours:.1f}" in text


def test_more_startup_time_means_more_risk() -> None:
    tr = builtin_trace(Profile.SALE)
    fast = simulate(tr, SimulationConfig(POLICY, startup_s=60))
    slow = simulate(tr, SimulationConfig(POLICY, startup_s=900))
    assert slow.policy.minutes_at_risk > fast.policy.minutes_at_risk


def test_max_replicas_caps_the_fleet() -> None:
    rep = simulate(builtin_trace(Profile.SALE), SimulationConfig(replace(POLICY, max_replicas=5)))
    assert max(p.desired for p in rep.points) == 5
    assert rep.policy.minutes_at_risk > 60
