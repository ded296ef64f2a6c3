"""A real Prometheus (Debian's binary), configured from deploy/prometheus/prometheus.yml,
scrapes a real ``babeldesk worker`` (smollm2-135m, one thread); then every Grafana panel
query is evaluated through Prometheus' HTTP API without error, and every recording and
alerting rule evaluates cleanly against the real series."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import WorkerProcess, free_port
from tests.deploy.test_grafana_dashboard import load_dashboard, panel_queries

PROM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
WAIT_S = 60.0  # upper bound for every wait on Prometheus


class PrometheusProcess:
    """Prometheus on a loopback port with its data in ``tmp``; the shipped config with
    1 s scrape / evaluation intervals and the given worker as the only target."""

    def __init__(self, tmp: Path, worker_target: str) -> None:
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        cfg["global"]["scrape_interval"] = "1s"
        cfg["global"]["evaluation_interval"] = "1s"
        shutil.copytree(PROM_DIR / "rules", tmp / "rules")
        (tmp / "targets").mkdir()
        (tmp / "targets" / "gateways.yml").write_text("[]\n")
        (tmp / "targets" / "dcgm.yml").write_text("[]\n")
        (tmp / "targets" / "workers.yml").write_text(
            yaml.safe_dump([{"targets": [worker_target]}]))
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
            time.sleep(0.5)
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


@pytest.fixture(scope="module")
def prometheus(
    smol_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not found: install Debian's prometheus (scripts/install.sh --test)")
    # traffic first, so histograms, token counters and error counters hold real samples
    for max_tokens in (4, 8):
        r = httpx.post(smol_worker.url + "/v1/chat/completions", timeout=120, json={
            "model": "smollm2-135m", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Where is my order?"}]})
        assert r.status_code == 200, r.text
    assert httpx.post(smol_worker.url + "/v1/chat/completions", json={}).status_code in (400, 422)
    prom = PrometheusProcess(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{smol_worker.port}")
    try:
        prom.wait_for("worker scraped twice (rate() needs two samples)", lambda: any(
            float(s["value"][1]) >= 2 for s in prom.api(
                "/api/v1/query", query='count_over_time(up{job="babeldesk-worker"}[1m])')["result"]))
        yield prom
    finally:
        prom.stop()


@pytest.mark.slow
def test_worker_target_is_up(prometheus: PrometheusProcess) -> None:
    (target,) = prometheus.api("/api/v1/targets")["activeTargets"]
    assert target["labels"]["job"] == "babeldesk-worker"
    assert target["health"] == "up", target


@pytest.mark.slow
def test_every_panel_query_evaluates(prometheus: PrometheusProcess) -> None:
    results = {}
    for name, promql in panel_queries(load_dashboard()):
        data = prometheus.api("/api/v1/query", query=promql)  # asserts status: success
        assert data["resultType"] == "vector", name
        results[name] = data["result"]
    # the panels fed by the worker's own metrics show real series, not just "no error"
    for name in (
        "Requests per second (QPS) / A",
        "Non-2xx responses by status / A",
        "Request latency p50 / p90 / p99 / C",
        "Time to first token / inter-token latency / B",
        "Queue depth and running sequences / A",
        "Batch size / B",
        "Tokens per second / A",
    ):
        assert results[name], f"{name}: no series from the worker"
    (qps,) = [s for s in results["Requests per second (QPS) / A"]
              if s["metric"].get("route") == "/v1/chat/completions"]
    assert qps["metric"]["app"] == "worker"
    statuses = {s["metric"]["status"] for s in results["Non-2xx responses by status / A"]}
    assert statuses & {"400", "422"}
    # no GPU here: the GPU panels are empty (absent, not faked)
    assert results["GPU utilisation / A"] == []


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
