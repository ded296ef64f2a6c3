"""benchmarks/engine_bench.py at tiny scale: a real llamacpp worker, 4 requests, its JSON,
then the report (Markdown block + PNGs) generated from that JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import engine_report  # noqa: E402
import engine_workload  # noqa: E402


def test_workload_is_fixed_and_multilingual() -> None:
    reqs = engine_workload.requests(256)
    assert len(reqs) == 256 and reqs[0] == engine_workload.requests(1)[0]
    assert len({r.language for r in reqs}) >= 12
    assert reqs[0].messages[0]["role"] == "system" and reqs[0].messages[1]["role"] == "user"
    a = engine_workload.poisson_arrivals(500, 2.0)
    assert a == sorted(a) and a == engine_workload.poisson_arrivals(500, 2.0)
    assert 200 < a[-1] < 300  # 500 arrivals at 2/s: about 250 s


@pytest.mark.slow
def test_tiny_run_writes_json_and_report(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, str(BENCH / "engine_bench.py"), "--models", "smollm2-135m",
           "--settings", "llamacpp", "--modes", "burst", "--requests", "4", "--threads", "1",
           "--results", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = json.loads((results / "smollm2-135m__llamacpp__burst.json").read_text())
    assert (run["model"], run["setting"], run["mode"], run["requests"]) == (
        "smollm2-135m", "llamacpp", "burst", 4)
    recs = run["records"]
    assert [r["index"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        assert r["error"] is None, r
        assert 0 < r["completion_tokens"] <= 64 and r["tokens_counted"] == "usage"
        assert 0 <= r["ttft_s"] <= r["e2e_s"] and r["text"].strip()
    s = run["summary"]
    assert s["ok"] == 4 and s["errors"] == 0
    assert s["completion_tokens"] == sum(r["completion_tokens"] for r in recs)
    assert s["output_tokens_per_s"] == pytest.approx(s["completion_tokens"] / s["wall_s"])
    assert s["peak_rss_mib"] > 50  # the worker process holds the model
    assert set(run["samples"]) == {"en", "zh"}  # requests 0-3: en, en, zh, zh

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nbefore\n{engine_report.BEGIN}\nSTALE-TABLE\n"
                   f"{engine_report.END}\nafter\n")
    engine_report.write_report(results, doc, tmp_path / "img")
    text = doc.read_text()
    assert "STALE-TABLE" not in text
    assert text.startswith("# B\n\nbefore\n") and text.endswith("after\n")
    assert "| (c) babeldesk llamacpp | burst | 4 |" in text
    for name in ("engine_smollm2-135m_throughput.png", "engine_smollm2-135m_latency.png"):
        assert (tmp_path / "img" / name).read_bytes()[:4] == b"\x89PNG"


def test_report_links_images_relative_to_the_detail_file(tmp_path: Path) -> None:
    """The engine's detailed runs live in docs/benchmarks/engine.md, one folder below the
    images: the generated block links ../img/, and regenerating it from the committed JSON
    gives the committed block (the file is the report of those runs, not hand-edited)."""
    assert engine_report.DOC == REPO / "docs" / "benchmarks" / "engine.md"
    committed = engine_report.DOC.read_text(encoding="utf-8")
    doc = tmp_path / "docs" / "benchmarks" / "engine.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(committed, encoding="utf-8")
    engine_report.write_report(REPO / "benchmarks" / "results" / "engine", doc,
                               tmp_path / "docs" / "img")
    text = doc.read_text(encoding="utf-8")
    assert "](../img/engine_qwen2.5-0.5b_throughput.png)" in text
    assert "](img/engine_" not in text
    assert text == committed
