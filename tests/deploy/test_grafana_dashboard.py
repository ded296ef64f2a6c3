"""deploy/grafana: the dashboard covers every topic of issue 5, its queries use the
template variables consistently, and the provisioning files point at it. The queries
themselves are evaluated by a real Prometheus in test_prometheus_integration.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

GRAFANA_DIR = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "babeldesk.json"

# Grafana's built-in interval variables -> a concrete PromQL duration for evaluation
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, rows' nested panels included."""
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p["type"] == "row" else [p])
    return out


def substitute(expr: str, dash: dict[str, Any]) -> str:
    """Replace Grafana variables as Grafana would with every template variable at "All":
    ``$job`` -> its allValue, ``$__rate_interval`` -> a duration. Unknown names raise."""
    values = dict(BUILTINS)
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            values[var["name"]] = var["allValue"]

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VAR.sub(repl, expr)


def panel_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL ready for Prometheus) for every target of every panel."""
    return [
        (f"{p['title']} / {t['refId']}", substitute(t["expr"], dash))
        for p in panels(dash)
        for t in p["targets"]
    ]


def test_dashboard_covers_issue_topics() -> None:
    dash = load_dashboard()
    exprs = " ".join(t["expr"] for p in panels(dash) for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in panels(dash))
    for metric in [
        "babeldesk_requests_total",  # QPS, error rate
        "babeldesk_request_duration_seconds_bucket",  # p50 / p90 / p99
        "babeldesk_time_to_first_token_seconds_bucket",
        "babeldesk_inter_token_latency_seconds_bucket",
        "babeldesk_cache_lookups_total",
        "babeldesk_messages_total",  # KB hit ratio, by language, by source
        "babeldesk_handoffs_total",
        "babeldesk_queue_depth",
        "babeldesk_batch_size_sum",
        "babeldesk_tokens_generated_total",
        "DCGM_FI_DEV_GPU_UTIL",
        "babeldesk_gpu_utilization_ratio",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "babeldesk_gpu_memory_used_bytes",
        "babeldesk_upstream_state",
        "babeldesk_upstream_healthy",
    ]:
        assert metric in exprs, metric
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (app, le) (rate(babeldesk_request_duration" in exprs
    for word in ("qps", "error", "latency", "first token", "language", "source", "handoff",
                 "queue", "batch", "tokens per second", "gpu utilisation", "gpu memory",
                 "circuit breaker"):
        assert word in titles, word


def test_panels_are_well_formed() -> None:
    dash = load_dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] and dash["schemaVersion"] >= 36
    for p in panels(dash):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for t in p["targets"]:
            # a rate over a fixed window breaks at other scrape intervals
            assert not re.search(r"\[\d+[smh]\]", t["expr"]), (p["title"], t["expr"])
            if "babeldesk_" in t["expr"] and "babeldesk_gpu_" not in t["expr"]:
                assert 'job=~"$job"' in t["expr"], (p["title"], t["expr"])


def test_substitution_leaves_plain_promql() -> None:
    dash = load_dashboard()
    queries = panel_queries(dash)
    assert len(queries) >= 25
    for name, promql in queries:
        assert "$" not in promql and "[[" not in promql, name
    assert substitute('rate(x{job=~"$job"}[$__rate_interval])', dash) == 'rate(x{job=~".*"}[1m])'


def test_provisioning_points_at_the_dashboard() -> None:
    provisioning = GRAFANA_DIR / "provisioning"
    prov = yaml.safe_load((provisioning / "dashboards" / "babeldesk.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    ds = yaml.safe_load((provisioning / "datasources" / "babeldesk.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    # the dashboard's $datasource variable offers Prometheus sources, this one included
    (var,) = [v for v in load_dashboard()["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == source["type"]
