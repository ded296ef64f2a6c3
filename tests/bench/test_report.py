"""Bench report: numbers from hand-built runs, the JSON the cost model and the autoscaler
read, and the rich table and PNG."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from babeldesk.bench.loadgen import LoadMode, RequestResult, RunResult
from babeldesk.bench.slo import Slo, Trial
from babeldesk.bench.report import (
    bench_document,
    bench_plot,
    bench_table,
    percentiles,
    summarize,
    write_json,
)
from babeldesk.bench.workload import WorkItem
from babeldesk.types import parse_bench_result


def _ok(latency_ms: float, source: str, *, gaps: tuple[float, ...] = (),
        handoff: bool = False) -> RequestResult:
    return RequestResult(0.1, "200", latency_s=latency_ms / 1000, ttft_s=latency_ms / 2000,
                         gaps_s=list(gaps), tokens=len(gaps) + 1, source=source,
                         handoff=handoff, language="en")


def _run() -> RunResult:
    rs = ([_ok(20, "knowledge_base")] * 6 + [_ok(50, "cache")] * 2
          + [_ok(1500, "model", gaps=(0.05, 0.07))] + [_ok(150, "handoff", handoff=True)]
          + [RequestResult(0.2, "429", error="queue full"),
             RequestResult(0.3, "timeout", error="timed out")])
    items = [WorkItem("q", "en", "order_status")] * len(rs)
    return RunResult(LoadMode.CLOSED, rs, wall_s=2.0, concurrency=3, items=items)


def test_summary_numbers() -> None:
    s = summarize(_run(), Slo(target_ms=200))
    assert (s["requests"], s["ok"], s["errors"]) == (12, 10, 2)
    assert s["errors_by_status"] == {"429": 1, "timeout": 1}
    assert s["achieved_rps"] == pytest.approx(5.0)
    assert s["under_100ms_share"] == pytest.approx(8 / 12)  # failures are not fast
    assert s["goodput_rps"] == pytest.approx(9 / 2.0)  # all but the model answer and errors
    assert s["source_shares"] == pytest.approx(
        {"knowledge_base": 0.6, "cache": 0.2, "model": 0.1, "handoff": 0.1})
    assert s["handoff_share"] == pytest.approx(0.1)
    assert s["translated_share"] == 0.0
    assert s["itl_ms"]["max"] == pytest.approx(70.0)
    assert s["latency_ms"]["max"] == pytest.approx(1500.0)
    assert s["tokens_per_s"] == pytest.approx((10 + 2) / 2.0)
    assert percentiles([]) is None


def test_json_feeds_cost_and_autoscale(tmp_path: Path) -> None:
    slo = Slo(target_ms=200)
    trials = [Trial(2.0, 2.0, 90.0, 0.0, True), Trial(4.0, 3.1, 900.0, 0.0, False)]
    doc = bench_document(summarize(_run(), slo), target={"kind": "support", "url": "http://x"},
                         workload={"kind": "builtin"}, trials=trials, slo_rps=2.0,
                         model="qwen2.5-0.5b")
    path = write_json(doc, tmp_path / "out" / "bench.json")
    import json

    data = json.loads(path.read_text())
    result = parse_bench_result(data)  # what cost and the autoscaler read
    assert result.slo_rps == 2.0 and result.achieved_rps == pytest.approx(5.0)
    assert result.without_model_share == pytest.approx(0.9)
    assert result.model_rps == pytest.approx(2.0 * 0.1)
    assert data["environment"]["loadavg"] and data["trials"][1]["met"] is False
    assert data["summary"]["slo_search_open"] is False  # bracketed by a failing trial
    assert data["summary"]["under_100ms_by_language"] == {"en": 0.8}


def test_table_and_plot(tmp_path: Path) -> None:
    run = _run()
    slo = Slo(target_ms=200)
    doc = bench_document(summarize(run, slo), target={"kind": "support", "url": "http://x"},
                         workload={}, trials=[Trial(2.0, 2.0, 90.0, 0.0, True)], slo_rps=2.0)
    console = Console(width=100, record=True)
    console.print(bench_table(doc))
    text = console.export_text()
    assert "66.7%" in text and "60% / 20% / 10% / 10%" in text and "429: 1" in text
    png = bench_plot(run, doc, tmp_path / "b.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
