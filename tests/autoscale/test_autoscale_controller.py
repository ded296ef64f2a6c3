"""The controller: pure parsers, the scale-subresource calls, the loop, and the
acceptance test: ``autoscale run --dry-run`` against a real running worker prints the
decisions ``decide`` makes on the same inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from babeldesk.autoscale.controller import (
    DryRunScaler,
    KubernetesScaler,
    counter_rate,
    parse_prometheus_vector,
    parse_scrape,
    run_controller,
)
from babeldesk.autoscale.policy import PolicyConfig, Sample, decide
from babeldesk.errors import InvalidRequest, Unavailable
from babeldesk.telemetry.metrics import Metrics

BIN = Path(sys.executable).parent / "babeldesk"


# --- parsers ------------------------------------------------------------------------------


def real_exposition() -> str:
    m = Metrics("gateway")
    m.requests_total.labels("gateway", "/v1/support/messages", "200").inc(7)
    m.requests_total.labels("gateway", "/v1/chat/completions", "429").inc(3)
    m.requests_total.labels("gateway", "/health", "200").inc(100)
    m.requests_total.labels("gateway", "/ready", "503").inc(5)
    m.requests_in_flight.labels("gateway").set(4)
    m.queue_depth.set(2)
    return m.render().decode()


def test_parse_scrape_counts_traffic_not_probes() -> None:
    s = parse_scrape(real_exposition())
    assert s.requests_total == 10  # 7 answered + 3 rate-limited: both are demand
    assert s.in_flight == 4 and s.queue_depth == 2
    only = parse_scrape(real_exposition(), routes=["/v1/chat/completions"])
    assert only.requests_total == 3


def test_parse_scrape_rejects_garbage() -> None:
    with pytest.raises(InvalidRequest):
        parse_scrape("babeldesk_requests_total{app=\"x\" 1 2 3\n")


def test_counter_rate_and_reset() -> None:
    assert counter_rate(100, 160, 30) == 2.0
    assert counter_rate(100, 15, 5) == 3.0  # restarted: counted 15 since
    with pytest.raises(InvalidRequest):
        counter_rate(1, 2, 0)


def test_parse_prometheus_vector() -> None:
    ok = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "a"}, "value": [1.0, "2.5"]},
        {"metric": {"pod": "b"}, "value": [1.0, "1.5"]}]}}
    assert parse_prometheus_vector(ok) == 4.0
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert parse_prometheus_vector(empty) == 0.0
    with pytest.raises(Unavailable):
        parse_prometheus_vector({"status": "error", "error": "bad query"})
    with pytest.raises(InvalidRequest):
        parse_prometheus_vector({"status": "success",
                                 "data": {"resultType": "matrix", "result": []}})


# --- Kubernetes scale subresource -----------------------------------------------------------


def test_kubernetes_scaler_speaks_the_scale_subresource(tmp_path: Path) -> None:
    # no API server here: a transport records what the scaler sends
    seen: list[httpx.Request] = []
    state = {"replicas": 3}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "PATCH":
            state["replicas"] = json.loads(request.content)["spec"]["replicas"]
        return httpx.Response(200, json={"kind": "Scale", "spec": {"replicas": state["replicas"]}})

    token = tmp_path / "token"
    token.write_text("first\n")
    client = httpx.Client(transport=httpx.MockTransport(handler))
    scaler = KubernetesScaler("https://api.example:6443", "shop", "babeldesk-worker", client, token)
    assert scaler.get_replicas() == 3
    token.write_text("rotated\n")
    scaler.set_replicas(5)
    assert state["replicas"] == 5
    get, patch = seen
    assert get.method == "GET" and patch.method == "PATCH"
    assert patch.url.path == "/apis/apps/v1/namespaces/shop/deployments/babeldesk-worker/scale"
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert json.loads(patch.content) == {"spec": {"replicas": 5}}
    assert get.headers["authorization"] == "Bearer first"
    assert patch.headers["authorization"] == "Bearer rotated"


def test_kubernetes_scaler_errors_are_unavailable() -> None:
    client = httpx.Client(transport=httpx.MockTransport(
        lambda r: httpx.Response(403, json={"reason": "Forbidden"})))
    scaler = KubernetesScaler("https://api.example", "shop", "w", client)
    with pytest.raises(Unavailable, match="403"):
        scaler.set_replicas(2)


# --- the loop -------------------------------------------------------------------------------


class ListSource:
    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)

    def read(self, now: float) -> float | None:
        v = self.values.pop(0)
        if isinstance(v, Exception):
            raise v
        return v


def test_loop_decisions_match_decide_and_survive_errors() -> None:
    policy = PolicyConfig(capacity_rps=1.0, max_replicas=6, sustain_s=3, max_sample_gap_s=1.5,
                          scale_up_cooldown_s=0)
    values: list[Any] = [None, 2.0, 2.0, Unavailable("gateway down"), 2.0, 2.0, 2.0, 2.0, 2.0]
    clock = iter(float(i) for i in range(100))
    errors: list[Exception] = []
    scaler = DryRunScaler(1)
    got = run_controller(ListSource(values), scaler, policy, interval_s=1, iterations=len(values),
                         dry_run=True, on_decision=lambda d: None, on_error=errors.append,
                         clock=lambda: next(clock), sleep=lambda s: None)
    assert len(errors) == 1 and len(got) == 7
    history: list[Sample] = []
    for d in got:
        history.append(Sample(d.at, d.qps, d.replicas))
        assert decide(history, d.at, policy) == d.desired
        assert not d.applied
    # the gap at t=3 keeps the first windows from counting as sustained; then it scales
    assert got[-1].desired > 1 and scaler.replicas == got[-1].desired


# --- acceptance: a real worker, the real CLI ------------------------------------------------


@pytest.mark.slow
def test_dry_run_against_a_running_worker_prints_decide(smol_worker: Any) -> None:
    url = smol_worker.url
    stop = threading.Event()
    sent = {"n": 0}
    lock = threading.Lock()

    def traffic() -> None:
        # bounded: 400 requests or 60 s in all, 2 tokens each; 4 clients so that every
        # 1 s interval sees completions even on a busy machine
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    if sent["n"] >= 400:
                        return
                    sent["n"] += 1
                c.post("/v1/chat/completions", json={
                    "model": "smollm2-135m", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "Hi"}]})

    policy_flags = ["--capacity-rps", "0.5", "--min-replicas", "1", "--max-replicas", "4",
                    "--sustain-s", "2", "--max-sample-gap-s", "5", "--scale-up-cooldown-s", "0",
                    "--timezone", "UTC"]
    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        proc = subprocess.run(
            [str(BIN), "autoscale", "run", "--dry-run", "--replicas", "1",
             "--metrics-url", f"{url}/metrics", "--interval-s", "1", "--iterations", "10",
             "--output", "json", *policy_flags],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # 10 reads; the first only sets the counter baseline (a failed read would be a warning)
    assert len(rows) == 9, proc.stdout + proc.stderr
    assert sent["n"] > 0 and sum(r["qps"] for r in rows) > 0, proc.stdout

    policy = PolicyConfig(capacity_rps=0.5, min_replicas=1, max_replicas=4, sustain_s=2,
                          max_sample_gap_s=5, scale_up_cooldown_s=0, timezone="UTC")
    history: list[Sample] = []
    replicas = 1
    for r in rows:
        assert r["replicas"] == replicas  # dry run: the last decision is the next state
        history.append(Sample(r["at"], r["qps"], r["replicas"]))
        assert r["desired"] == decide(history, r["at"], policy), proc.stdout
        assert r["applied"] is False
        replicas = r["desired"]
    # the traffic was sustained: it scaled up
    assert max(r["desired"] for r in rows) > 1, proc.stdout


def start_prometheus(tmp: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's Prometheus on a free loopback port, scraping ``target`` every second."""
    import shutil
    import socket

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install Debian's prometheus (scripts/install.sh --test)")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: babeldesk-worker\n    static_configs: [{{targets: ['{target}']}}]\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=(tmp / "prometheus.log").open("wb"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def prom_query(url: str, query: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.slow
def test_dry_run_reads_a_real_prometheus(smol_worker: Any, tmp_path: Path) -> None:
    from babeldesk.autoscale.controller import PrometheusQps

    url = smol_worker.url
    query = ('sum(rate(babeldesk_requests_total{app="worker",'
             'route="/v1/chat/completions"}[10s]))')
    stop = threading.Event()

    def traffic() -> None:  # bounded: 2000 requests or 90 s, stopped when the run ends
        with httpx.Client(base_url=url, timeout=30) as c:
            deadline = time.monotonic() + 90
            for _ in range(2000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                c.post("/v1/chat/completions", json={
                    "model": "smollm2-135m", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "Hi"}]})

    prom, prom_url = start_prometheus(tmp_path, f"127.0.0.1:{smol_worker.port}")
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:  # until Prometheus has two scrapes with traffic between them
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            try:
                if any(float(r["value"][1]) > 0 for r in prom_query(prom_url, query)):
                    break
            except (httpx.HTTPError, ValueError):  # still starting
                pass
            time.sleep(0.1)
        # the controller's default query is valid PromQL against the real series
        prom_query(prom_url, PrometheusQps.DEFAULT_QUERY)
        proc = subprocess.run(
            [str(BIN), "autoscale", "run", "--dry-run", "--replicas", "2",
             "--prometheus", prom_url, "--query", query, "--capacity-rps", "100",
             "--interval-s", "0.5", "--iterations", "3", "--output", "json"],
            capture_output=True, text=True, timeout=120, check=False)
    finally:
        stop.set()
        thread.join(timeout=60)
        prom.terminate()
        prom.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3 and all(r["qps"] > 0 for r in rows), proc.stdout  # no baseline read
    policy = PolicyConfig(capacity_rps=100)
    history: list[Sample] = []
    for r in rows:
        history.append(Sample(r["at"], r["qps"], r["replicas"]))
        assert r["desired"] == decide(history, r["at"], policy)
