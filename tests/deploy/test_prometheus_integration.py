"""A real Prometheus (Debian's binary), configured from deploy/prometheus/prometheus.yml,
scrapes a real ``babeldesk serve`` (as the gateway job) and a real ``babeldesk worker``
(smollm2-135m, one thread each) after real support and completion traffic; then every
Grafana panel query is evaluated through Prometheus' HTTP API without error (the ones the
traffic feeds with real series), and every recording and alerting rule evaluates cleanly."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import WorkerProcess, free_port, start_worker
from tests.deploy.test_grafana_dashboard import load_dashboard, panel_queries

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
WAIT_S = 60.0  # upper bound for every wait on Prometheus


class PrometheusProcess:
    """Prometheus on a loopback port with its data in ``tmp``: the shipped config with
    1 s scrape / evaluation intervals and the given gateway and worker as targets."""

    def __init__(self, tmp: Path, gateway: str, worker: str) -> None:
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        cfg["global"]["scrape_interval"] = "1s"
        cfg["global"]["evaluation_interval"] = "1s"
        shutil.copytree(PROM_DIR / "rules", tmp / "rules")
        (tmp / "targets").mkdir()
        for name, target in (("gateways", gateway), ("workers", worker)):
            (tmp / "targets" / f"{name}.yml").write_text(yaml.safe_dump([{"targets": [target]}]))
        (tmp / "targets" / "dcgm.yml").write_text("[]\n")  # no GPU here
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus",
             f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self._log_file, stderr=subprocess.STDOUT)

    def value(self, promql: str) -> float:
        """The single value of an instant query (NaN when there is no series)."""
        result = self.api("/api/v1/query", query=promql)["result"]
        return float(result[0]["value"][1]) if result else math.nan

    def api(self, path: str, **params: str) -> Any:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited:\n{self.log.read_text()}")
        r = httpx.get(self.url + path, params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def wait_for(self, what: str, check: Any) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except (httpx.HTTPError, AssertionError, ValueError):  # starting: 503, not JSON
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus: {what}\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def support_traffic(serve_url: str) -> None:
    """Knowledge-base answers in two languages, a cache hit and a handoff."""
    for message in ("Hola, ¿cuándo me devuelven el dinero de mi devolución?",
                    "How long does delivery to Germany take?",
                    "How long does delivery to Germany take?",
                    "I want to talk to a real person, not a bot"):
        r = httpx.post(serve_url + "/v1/support/messages", json={"message": message}, timeout=120)
        assert r.status_code == 200, r.text


def worker_traffic(worker_url: str) -> None:
    """Two short generations and one bad request."""
    for max_tokens in (4, 8):
        r = httpx.post(worker_url + "/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Where is my order?"}]})
        assert r.status_code == 200, r.text
    assert httpx.post(worker_url + "/v1/chat/completions", json={}).status_code in (400, 422)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """``babeldesk serve`` (gateway + engine in one process) on the small model."""
    tmp = tmp_path_factory.mktemp("serve-metrics")
    proc = start_worker(tmp, "--model", "smollm2-135m", "--sessions", f"sqlite:///{tmp}/s.db",
                        "--no-verifier", command="serve")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prometheus(
    serve: WorkerProcess, smol_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found: install Debian's prometheus (scripts/install.sh --test)")
    # Labelled counters appear at their first increment, and rate() needs two samples of
    # the series: traffic once before the first scrape and once after it.
    support_traffic(serve.url)
    worker_traffic(smol_worker.url)
    prom = PrometheusProcess(tmp_path_factory.mktemp("prometheus"),
                             f"127.0.0.1:{serve.port}", f"127.0.0.1:{smol_worker.port}")
    try:
        prom.wait_for("both targets scraped", lambda: prom.value(
            'count(count_over_time(babeldesk_requests_total{job=~"babeldesk-.*"}[1m])) by (job)'
            ) >= 1 and prom.value('count(up == 1)') == 2)
        support_traffic(serve.url)
        worker_traffic(smol_worker.url)
        prom.wait_for("the second round scraped", lambda: (
            prom.value("sum(rate(babeldesk_messages_total[1m]))") > 0
            and prom.value("sum(rate(babeldesk_tokens_generated_total"
                           '{job="babeldesk-worker"}[1m]))') > 0))
        yield prom
    finally:
        prom.stop()


@pytest.mark.slow
def test_gateway_and_worker_targets_are_up(prometheus: PrometheusProcess) -> None:
    targets = prometheus.api("/api/v1/targets")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == ["babeldesk-gateway", "babeldesk-worker"]
    for t in targets:
        assert t["health"] == "up", t


@pytest.mark.slow
def test_every_panel_query_evaluates(prometheus: PrometheusProcess) -> None:
    results = {}
    for name, promql in panel_queries(load_dashboard()):
        data = prometheus.api("/api/v1/query", query=promql)  # asserts status: success
        assert data["resultType"] == "vector", name
        results[name] = data["result"]

    def values(name: str, label: str) -> dict[str, float]:
        return {s["metric"].get(label, ""): float(s["value"][1]) for s in results[name]}

    # the panels fed by real traffic show real series, not just "no error"
    for name in (
        "Requests per second (QPS) / A", "Non-2xx responses by status / A",
        "Request latency p50 / p90 / p99 / C", "Time to first token / inter-token latency / B",
        "Queue depth and running sequences / A", "Batch size / B", "Tokens per second / A",
        "Answered without the model / A", "Cache hit ratio by kind / A",
        "Handoffs to a human / A", "Messages by language / A", "Messages by answer source / A",
        "Answered under 100 ms / A", "Conversation outcomes by language / A",
        "Handoffs by intent / A",
    ):
        assert results[name], f"{name}: no series"
    qps = {(s["metric"]["app"], s["metric"]["route"])
           for s in results["Requests per second (QPS) / A"]}
    assert {("worker", "/v1/chat/completions"), ("gateway", "/v1/support/messages")} <= qps
    assert set(values("Non-2xx responses by status / A", "status")) & {"400", "422"}
    assert {"es", "en"} <= set(values("Messages by language / A", "language"))
    sources = values("Messages by answer source / A", "source")
    assert {"knowledge_base", "cache", "handoff"} <= set(sources)
    # the second round's repeated questions come from the cache
    assert sources["cache"] > 0 and sources["handoff"] > 0
    assert values("Handoffs to a human / A", "reason")["customer_request"] > 0
    (without_model,) = values("Answered without the model / A", "").values()
    assert 0 < without_model < 1  # KB + cache, not the handoff
    (under_100ms,) = values("Answered under 100 ms / A", "").values()
    assert 0 <= under_100ms <= 1
    # no GPU here: the GPU panels are empty (absent, not faked)
    assert results["GPU utilisation / A"] == [] and results["GPU memory / A"] == []


@pytest.mark.slow
def test_every_rule_evaluates_cleanly(prometheus: PrometheusProcess) -> None:
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.api("/api/v1/rules")["groups"]
        return [r for g in groups for r in g["rules"]]

    prometheus.wait_for("every rule evaluated once",
                        lambda: all(r["health"] != "unknown" for r in rules()))
    got = rules()
    shipped = yaml.safe_load((PROM_DIR / "rules" / "babeldesk.rules.yml").read_text())
    assert len(got) == sum(len(g["rules"]) for g in shipped["groups"])
    for r in got:
        assert r["health"] == "ok", r
        assert not r.get("lastError"), r
    # an idle single worker with no gateway fires nothing
    firing = [r["name"] for r in got if r["type"] == "alerting" and r["state"] == "firing"]
    assert firing == []
