"""nginx and Envoy configs rendered from the fleet config.

nginx: every variant is checked by the real ``nginx -t``. Envoy cannot be installed here
(no Debian package, no binary on PyPI), so its config is validated structurally: every key
against the Envoy v3 API fields used (a typo fails), durations, type URLs, and the values
the issue asks for.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from babeldesk.cli import app
from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig
from babeldesk.errors import ConfigError
from babeldesk.fleet.render import ProxyOptions, envoy_config, render_envoy, render_nginx

POOL = FleetConfig(upstreams=(
    UpstreamConfig("http://127.0.0.1:8001", weight=3),
    UpstreamConfig("http://localhost:8002"),
    UpstreamConfig("http://127.0.0.1:8003", backup=True),
))


def nginx_t(tmp_path: Path, text: str) -> None:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                    else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed (scripts/install.sh --test installs it)")
        pytest.skip("nginx is not installed")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    r = subprocess.run([exe, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + "\n" + text


@pytest.mark.parametrize("policy", list(RoutingPolicy))
@pytest.mark.parametrize("with_backup", [True, False])
def test_nginx_t_accepts_every_variant(tmp_path: Path, policy: RoutingPolicy,
                                       with_backup: bool) -> None:
    ups = POOL.upstreams if with_backup else POOL.upstreams[:2]
    cfg = dataclasses.replace(POOL, upstreams=ups, policy=policy, first_byte_timeout_s=0.5,
                              read_timeout_s=90.5)
    nginx_t(tmp_path, render_nginx(cfg, ProxyOptions(listen_host="127.0.0.1",
                                                     listen_port=18080)))


def test_nginx_directives() -> None:
    text = render_nginx(POOL)
    assert "hash $http_x_session_id consistent;" in text
    assert "server 127.0.0.1:8001 weight=3 max_fails=5 fail_timeout=30s;" in text
    assert "server localhost:8002 weight=1 max_fails=5 fail_timeout=30s;" in text
    # nginx refuses `backup` with `hash`: the backup is its own upstream behind error_page
    assert " backup;" not in text and "upstream babeldesk_backup {" in text
    assert "error_page 502 504 = @backup;" in text
    for line in ("proxy_buffering off;", "proxy_read_timeout 60s;", "proxy_connect_timeout 2s;",
                 "proxy_next_upstream_tries 3;", "proxy_http_version 1.1;"):
        assert line in text
    rr = render_nginx(dataclasses.replace(POOL, policy=RoutingPolicy.WEIGHTED_ROUND_ROBIN))
    assert "hash " not in rr and "fail_timeout=30s backup;" in rr and "@backup" not in rr
    lo = render_nginx(dataclasses.replace(POOL, policy=RoutingPolicy.LEAST_OUTSTANDING,
                                          session_header="X-Conversation"))
    assert "least_conn;" in lo
    sa = render_nginx(dataclasses.replace(POOL, session_header="X-Conversation"))
    assert "hash $http_x_conversation consistent;" in sa


def test_renderers_refuse_what_they_cannot_express() -> None:
    with pytest.raises(ConfigError, match="not a backup"):
        render_nginx(FleetConfig(upstreams=(UpstreamConfig("http://a:1", backup=True),)))
    with pytest.raises(ConfigError, match="plain http"):
        render_envoy(FleetConfig(upstreams=(UpstreamConfig("https://a:1"),)))
    with pytest.raises(ConfigError, match="no path"):
        render_nginx(FleetConfig(upstreams=(UpstreamConfig("http://a:1/v1"),)))


# --- Envoy: structural validation -------------------------------------------------------

DURATION = re.compile(r"^\d+(\.\d+)?s$")
ADDRESS = {"socket_address": {"address": str, "port_value": int}}
# The Envoy v3 fields this renderer may use (names from the v3 API reference).
SCHEMA: dict[str, Any] = {
    "admin": {"address": ADDRESS},
    "static_resources": {
        "listeners": [{
            "name": str, "address": ADDRESS,
            "filter_chains": [{"filters": [{"name": str, "typed_config": {
                "@type": str, "stat_prefix": str, "codec_type": str,
                "stream_idle_timeout": "duration",
                "route_config": {"name": str, "virtual_hosts": [{
                    "name": str, "domains": [str],
                    "routes": [{"match": {"prefix": str}, "route": {
                        "cluster": str, "timeout": "duration", "idle_timeout": "duration",
                        "hash_policy": [{"header": {"header_name": str}}],
                        "retry_policy": {
                            "retry_on": str, "num_retries": int,
                            "per_try_idle_timeout": "duration",
                            "retry_host_predicate": [{"name": str,
                                                      "typed_config": {"@type": str}}],
                            "host_selection_retry_max_attempts": int,
                        },
                    }}],
                }]},
                "http_filters": [{"name": str, "typed_config": {"@type": str}}],
            }}]}],
        }],
        "clusters": [{
            "name": str, "type": str, "dns_lookup_family": str,
            "dns_refresh_rate": "duration", "connect_timeout": "duration", "lb_policy": str,
            "ring_hash_lb_config": {"minimum_ring_size": int},
            "circuit_breakers": {"thresholds": [{
                "priority": str, "max_connections": int, "max_pending_requests": int,
                "max_requests": int,
                "retry_budget": {"budget_percent": {"value": float},
                                 "min_retry_concurrency": int},
            }]},
            "health_checks": [{
                "timeout": "duration", "interval": "duration",
                "no_traffic_interval": "duration", "interval_jitter_percent": int,
                "unhealthy_threshold": int, "healthy_threshold": int,
                "http_health_check": {"path": str},
            }],
            "outlier_detection": {
                "consecutive_5xx": int, "base_ejection_time": "duration",
                "max_ejection_time": "duration", "interval": "duration",
                "max_ejection_percent": int,
            },
            "load_assignment": {"cluster_name": str, "endpoints": [{
                "priority": int,
                "lb_endpoints": [{"endpoint": {"address": ADDRESS},
                                  "load_balancing_weight": int}],
            }]},
        }],
    },
}


def validate(node: Any, schema: Any, path: str = "") -> None:
    if schema == "duration":
        assert isinstance(node, str) and DURATION.match(node), f"{path}: duration {node!r}"
    elif isinstance(schema, type):
        ok = isinstance(node, schema) or (schema is float and isinstance(node, int))
        assert ok and not isinstance(node, bool), f"{path}: want {schema.__name__}, {node!r}"
    elif isinstance(schema, list):
        assert isinstance(node, list) and node, f"{path}: want a non-empty list"
        for i, item in enumerate(node):
            validate(item, schema[0], f"{path}[{i}]")
    else:
        assert isinstance(node, dict), f"{path}: want a mapping"
        unknown = set(node) - set(schema)
        assert not unknown, f"{path}: unknown Envoy fields {unknown}"
        for key, value in node.items():
            validate(value, schema[key], f"{path}.{key}")


@pytest.mark.parametrize("policy", list(RoutingPolicy))
def test_envoy_config_is_structurally_valid(policy: RoutingPolicy) -> None:
    cfg = dataclasses.replace(POOL, policy=policy)
    text = render_envoy(cfg)
    data = yaml.safe_load(text)
    assert data == envoy_config(cfg)  # the YAML says exactly the data
    validate(data, SCHEMA)
    for m in re.finditer(r"'?@type'?: (\S+)", text):
        assert m.group(1).startswith("type.googleapis.com/envoy.")


def test_envoy_values() -> None:
    data = envoy_config(POOL, ProxyOptions(listen_port=9000))
    (listener,) = data["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 9000
    (cluster,) = data["static_resources"]["clusters"]
    hc = cluster["health_checks"][0]
    assert (hc["interval"], hc["http_health_check"]["path"]) == ("30s", "/ready")
    od = cluster["outlier_detection"]
    assert (od["consecutive_5xx"], od["base_ejection_time"]) == (5, "30s")
    assert cluster["lb_policy"] == "RING_HASH"
    prio = cluster["load_assignment"]["endpoints"]
    assert [p["priority"] for p in prio] == [0, 1]
    assert [e["load_balancing_weight"] for e in prio[0]["lb_endpoints"]] == [3, 1]
    addr = prio[1]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (addr["address"], addr["port_value"]) == ("127.0.0.1", 8003)
    route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"][0]["route"]
    assert route["hash_policy"] == [{"header": {"header_name": "x-session-id"}}]
    assert route["retry_policy"]["num_retries"] == 2 and route["timeout"] == "0s"
    rr = envoy_config(dataclasses.replace(POOL, policy=RoutingPolicy.WEIGHTED_ROUND_ROBIN))
    assert rr["static_resources"]["clusters"][0]["lb_policy"] == "ROUND_ROBIN"
    assert "ring_hash_lb_config" not in rr["static_resources"]["clusters"][0]


def test_cli_renders_from_flags_and_from_config(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "nginx.conf"
    r = runner.invoke(app, ["deploy", "nginx", "-u", "http://127.0.0.1:8001", "-u",
                            "http://127.0.0.1:8002", "--backup", "http://127.0.0.1:8003",
                            "--listen", "127.0.0.1:18081", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "listen 127.0.0.1:18081;" in out.read_text()
    nginx_t(tmp_path, out.read_text())
    cfg = tmp_path / "fleet.yaml"
    cfg.write_text("fleet:\n  policy: least_outstanding\n  breaker_failures: 7\n"
                   "  upstreams: [http://127.0.0.1:8001, {url: 'http://w2:8000', weight: 4}]\n")
    r = runner.invoke(app, ["deploy", "envoy", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    data = yaml.safe_load(r.stdout)
    (cluster,) = data["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 7
    r = runner.invoke(app, ["deploy", "nginx", "-u", "ftp://x"])
    assert r.exit_code == 2 and "fleet.upstreams.url" in r.output
