"""`babeldesk bench` against a real `babeldesk serve` (support API and its OpenAI API),
its report read back by `babeldesk cost`, and `babeldesk tune` on the real engine.
Small scale: smollm2-135m, one thread, a few requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess, start_worker

BIN = Path(sys.executable).parent / "babeldesk"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], check=False, capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("bench-serve")
    w = start_worker(tmp, "--model", "smollm2-135m", "--no-verifier",
                     "--sessions", f"sqlite:///{tmp}/s.db", command="serve")
    yield w
    assert w.stop() == 0


@pytest.mark.slow
def test_bench_support_target_with_slo_search(serve: WorkerProcess, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    r = _cli("bench", "--url", serve.url, "--requests", "12", "--concurrency", "3",
             "--languages", "en,es,fr,de,zh", "--free-form-share", "0.2", "--seed", "4",
             "--search", "--search-start-rate", "0.5", "--search-trials", "2",
             "--trial-requests", "6", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "answered under 100 ms" in r.stdout and "SLO trial 2" in r.stdout
    doc = json.loads((out / "bench.json").read_text())
    s = doc["summary"]
    assert s["requests"] == 12 and s["ok"] == 12 and s["errors_by_status"] == {}
    assert s["achieved_rps"] > 0 and 0 <= s["under_100ms_share"] <= 1
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"]
    shares = s["source_shares"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["knowledge_base"] + shares["cache"] > 0  # recurring questions, no model
    assert set(s["languages"]) <= {"en", "es", "fr", "de", "zh"}
    assert len(doc["trials"]) == 2 and doc["trials"][0]["rate"] == 0.5
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    # the cost model reads the same file: the share the model generated (free answers and
    # help-center answers) sizes the GPU fleet; a run in which no answer needed the model
    # (the free-form questions handed off: smollm2 found nothing to say from the articles)
    # cannot size one, and cost says which field
    c = _cli("cost", "--requests-per-day", "10000", "--fleet",
             f"cpu:price=0.1,bench={out / 'bench.json'}", "--out", str(tmp_path / "cost"),
             "--no-plot")
    generated = shares["model"] + shares.get("document", 0)
    if generated > 0:
        assert c.returncode == 0, c.stdout + c.stderr
        assert json.loads((tmp_path / "cost" / "cost.json").read_text())["fleets"][0][
            "measured_without_model_share"] == pytest.approx(1 - generated)
    else:
        assert c.returncode == 2 and "source_shares.model + document" in c.stderr, c.stderr
        assert "Traceback" not in c.stderr


@pytest.mark.slow
def test_bench_openai_target(serve: WorkerProcess, tmp_path: Path) -> None:
    out = tmp_path / "openai"
    r = _cli("bench", "--url", serve.url, "--target", "openai", "--mode", "open",
             "--rate", "2", "--requests", "4", "--max-tokens", "8", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out / "bench.json").read_text())["summary"]
    assert s["ok"] == 4 and s["offered_rps"] == 2
    assert s["source_shares"]["model"] == 1.0
    assert 0 < s["ttft_ms"]["p50"] <= s["latency_ms"]["p50"]
    assert s["itl_ms"] is not None and 0 < s["tokens_per_s"]
    # the support API without SSE: one JSON answer, so TTFT is the whole latency
    r = _cli("bench", "--url", serve.url, "--no-stream", "--requests", "3", "--concurrency", "1",
             "--languages", "en", "--free-form-share", "0", "--out", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "plain" / "bench.json").read_text())["summary"]
    assert s["ok"] == 3 and s["ttft_ms"] == s["latency_ms"] and s["itl_ms"] is None


@pytest.mark.slow
def test_bench_fails_when_nothing_answers(tmp_path: Path) -> None:
    r = _cli("bench", "--url", "http://127.0.0.1:9", "--requests", "2", "--timeout", "5",
             "--out", str(tmp_path), "--no-plot")
    assert r.returncode == 2 and "no request was answered" in r.stderr
    s = json.loads((tmp_path / "bench.json").read_text())["summary"]
    assert s["errors_by_status"] == {"connect_error": 2}


@pytest.mark.slow
def test_tune_on_the_real_engine(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    r = _cli("tune", "--model", "smollm2-135m", "--threads", "1", "--batch-sizes", "1,2",
             "--max-model-len", "256,512", "--max-tokens", "8", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((out / "tune.json").read_text())
    pts = doc["points"]
    assert [(p["batch_size"], p["max_model_len"]) for p in pts][:2] == [(1, 256), (2, 256)]
    assert pts[2]["max_model_len"] == 512 and len(pts) == 3
    for p in pts:
        assert not p["oom"] and p["errors"] == 0 and p["requests"] == 2 * p["batch_size"]
        assert p["tokens_per_s"] > 0 and p["peak_memory_bytes"] > 50 * 2**20
    assert doc["recommended_batch_size"] in (1, 2) and doc["device"] == "cpu"
    assert (out / "tune.png").read_bytes()[:4] == b"\x89PNG"
    assert "recommended max_batch_size" in r.stdout
