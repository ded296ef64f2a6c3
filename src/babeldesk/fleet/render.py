"""Render the fleet's pool as an nginx or Envoy config (``babeldesk deploy nginx|envoy``).

Rendered in code, not from template files: the values come from the same ``FleetConfig``
the gateway reads, so the three balancers (gateway, nginx, Envoy) cannot drift apart, and
an installed package needs no repo checkout. Envoy's config is built as data and dumped as
YAML. What each balancer can and cannot do the same way is said next to the directive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from babeldesk.config import FleetConfig, RoutingPolicy, UpstreamConfig
from babeldesk.errors import ConfigError

UPSTREAM = "babeldesk_workers"
BACKUP = "babeldesk_backup"


@dataclass(frozen=True)
class ProxyOptions:
    """Where the balancer itself listens and keeps its files."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    worker_processes: str = "auto"  # nginx
    pid: str = "nginx.pid"  # nginx; relative paths are under nginx's prefix (-p)
    error_log: str = "stderr"  # nginx: a path, or stderr
    access_log: str = "off"  # nginx: a path, or off
    user: str = ""  # nginx ``user`` directive (only read when the master runs as root)
    temp_dir: str = "tmp"  # nginx client body / proxy temp files, under the prefix
    admin_port: int = 9901  # Envoy admin listener, on 127.0.0.1

    def __post_init__(self) -> None:
        for key in ("listen_port", "admin_port"):
            port = getattr(self, key)
            if not 0 < port < 65536:
                raise ConfigError(f"deploy.{key}", "must be a TCP port")


def _host_port(u: UpstreamConfig) -> tuple[str, int]:
    parts = urlsplit(u.url)
    if parts.scheme != "http":
        raise ConfigError("fleet.upstreams.url",
                          f"{u.url}: the rendered balancers speak plain http to workers")
    if parts.path not in ("", "/"):
        raise ConfigError("fleet.upstreams.url", f"{u.url}: give the base url, no path")
    return parts.hostname or "", parts.port or 80


def _nginx_time(seconds: float) -> str:
    """nginx time: whole seconds as ``30s``, otherwise milliseconds (``500ms``)."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, math.ceil(seconds * 1000))}ms"


def _envoy_duration(seconds: float) -> str:
    """protobuf Duration in YAML: ``30s``, ``0.5s``."""
    return f"{seconds:g}s"


def _check_pool(cfg: FleetConfig) -> tuple[list[UpstreamConfig], list[UpstreamConfig]]:
    primaries = [u for u in cfg.upstreams if not u.backup]
    backups = [u for u in cfg.upstreams if u.backup]
    if not primaries:
        raise ConfigError("fleet.upstreams", "needs at least one upstream that is not a backup")
    for u in cfg.upstreams:
        _host_port(u)
    return primaries, backups


# --- nginx ------------------------------------------------------------------------------


def render_nginx(cfg: FleetConfig, opts: ProxyOptions = ProxyOptions()) -> str:
    """A complete nginx.conf for the pool (open-source nginx >= 1.18)."""
    primaries, backups = _check_pool(cfg)
    hashing = cfg.policy is RoutingPolicy.SESSION_AFFINITY
    session_var = "$http_" + cfg.session_header.lower().replace("-", "_")
    # nginx rejects ``backup`` together with ``hash``: with session affinity the backups
    # get their own upstream, reached when nginx itself answers 502/504 (every primary
    # failed or is marked down), before anything was sent to the client.
    native_backup = bool(backups) and not hashing
    fails = f"max_fails={cfg.breaker_failures} fail_timeout={_nginx_time(cfg.breaker_reset_s)}"

    def server_line(u: UpstreamConfig, backup: bool) -> str:
        host, port = _host_port(u)
        return (f"        server {host}:{port} weight={u.weight} {fails}"
                + (" backup" if backup else "") + ";")

    lines = ["# Rendered by `babeldesk deploy nginx` from the fleet config; edit that, not this.",
             "# Passive health only (open-source nginx has no active checks): a worker is",
             f"# out for {_nginx_time(cfg.breaker_reset_s)} after {cfg.breaker_failures} "
             "failures (error, timeout, 5xx); a 4xx is not a failure.",
             "# DNS names in `server` lines are resolved when nginx starts or reloads."]
    if opts.user:
        lines.append(f"user {opts.user};")
    lines += [
        f"worker_processes {opts.worker_processes};",
        f"pid {opts.pid};",
        f"error_log {opts.error_log} warn;",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        f"    access_log {opts.access_log};",
        f"    client_body_temp_path {opts.temp_dir}/client_body;",
        f"    proxy_temp_path {opts.temp_dir}/proxy;",
        f"    fastcgi_temp_path {opts.temp_dir}/fastcgi;",
        f"    uwsgi_temp_path {opts.temp_dir}/uwsgi;",
        f"    scgi_temp_path {opts.temp_dir}/scgi;",
        "    client_max_body_size 1m;",
        "",
        f"    upstream {UPSTREAM} {{",
    ]
    if hashing:
        lines.append(f"        # session affinity: consistent hash on the {cfg.session_header} "
                     "header; no header: round robin")
        lines.append(f"        hash {session_var} consistent;")
    elif cfg.policy is RoutingPolicy.LEAST_OUTSTANDING:
        lines.append("        least_conn;")
    lines += [server_line(u, False) for u in primaries]
    if native_backup:
        lines += [server_line(u, True) for u in backups]
    lines += ["        keepalive 64;", "    }"]
    if backups and not native_backup:
        lines += ["", f"    upstream {BACKUP} {{"]
        lines += [server_line(u, False) for u in backups]
        lines += ["        keepalive 16;", "    }"]

    def proxy_block(upstream: str, indent: str) -> list[str]:
        return [indent + s for s in (
            f"proxy_pass http://{upstream};",
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_set_header Host $host;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Request-Id $request_id;",
            "# server-sent events: pass every chunk on at once",
            "proxy_buffering off;",
            "proxy_cache off;",
            "gzip off;",
            f"proxy_connect_timeout {_nginx_time(cfg.connect_timeout_s)};",
            f"proxy_read_timeout {_nginx_time(cfg.read_timeout_s)};",
            f"proxy_send_timeout {_nginx_time(cfg.read_timeout_s)};",
            "# retry on another worker before the first byte reached the client (as the",
            "# gateway does); POST is retried too (non_idempotent), a 429 or 4xx is not",
            "proxy_next_upstream error timeout http_500 http_502 http_503 http_504"
            " non_idempotent;",
            f"proxy_next_upstream_tries {cfg.retry_attempts};",
            f"proxy_next_upstream_timeout {_nginx_time(cfg.retry_deadline_s)};",
        )]

    lines += [
        "",
        "    server {",
        f"        listen {opts.listen_host}:{opts.listen_port};",
        "",
        "        location = /nginx-health {",
        "            access_log off;",
        '            return 200 "ok\\n";',
        "        }",
        "",
        "        location / {",
        *proxy_block(UPSTREAM, "            "),
    ]
    if backups and not native_backup:
        lines += ["            error_page 502 504 = @backup;"]
    lines += ["        }"]
    if backups and not native_backup:
        lines += ["", "        location @backup {", *proxy_block(BACKUP, "            "),
                  "        }"]
    lines += ["    }", "}", ""]
    return "\n".join(lines)


# --- Envoy ------------------------------------------------------------------------------

_T = "type.googleapis.com/envoy."
_LB = {
    RoutingPolicy.SESSION_AFFINITY: "RING_HASH",
    RoutingPolicy.LEAST_OUTSTANDING: "LEAST_REQUEST",
    RoutingPolicy.WEIGHTED_ROUND_ROBIN: "ROUND_ROBIN",
}


def envoy_config(cfg: FleetConfig, opts: ProxyOptions = ProxyOptions()) -> dict[str, Any]:
    """Envoy v3 bootstrap (static resources) for the pool, as data."""
    primaries, backups = _check_pool(cfg)

    def endpoints(group: list[UpstreamConfig], priority: int) -> dict[str, Any]:
        eps = []
        for u in group:
            host, port = _host_port(u)
            eps.append({
                "endpoint": {"address": {"socket_address": {"address": host,
                                                            "port_value": port}}},
                "load_balancing_weight": u.weight,
            })
        return {"priority": priority, "lb_endpoints": eps}

    route: dict[str, Any] = {
        "cluster": UPSTREAM,
        "timeout": "0s",  # no total limit: an answer streams as long as it needs
        "idle_timeout": _envoy_duration(cfg.read_timeout_s),  # longest gap between chunks
        "retry_policy": {
            # Envoy retries only until the response headers went downstream: like the
            # gateway, a stream broken midway is never replayed
            "retry_on": "connect-failure,refused-stream,reset,5xx",
            "num_retries": cfg.retry_attempts - 1,
            "per_try_idle_timeout": _envoy_duration(cfg.first_byte_timeout_s),
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": _T + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                },
            }],
            "host_selection_retry_max_attempts": 5,
        },
    }
    if cfg.policy is RoutingPolicy.SESSION_AFFINITY:
        route["hash_policy"] = [{"header": {"header_name": cfg.session_header}}]

    cluster: dict[str, Any] = {
        "name": UPSTREAM,
        # STRICT_DNS: every address of a name is an endpoint (a headless Service),
        # re-resolved every dns_refresh_rate; an IP literal is itself
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "dns_refresh_rate": _envoy_duration(cfg.dns_refresh_s or 30.0),
        "connect_timeout": _envoy_duration(cfg.connect_timeout_s),
        "lb_policy": _LB[cfg.policy],
        "circuit_breakers": {"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": cfg.max_connections,
            "max_pending_requests": cfg.max_connections,
            "max_requests": cfg.max_connections,
            # retries may add at most this share of active requests (the gateway's budget)
            "retry_budget": {
                "budget_percent": {"value": round(cfg.retry_budget_ratio * 100, 3)},
                "min_retry_concurrency": cfg.retry_budget_min,
            },
        }]},
        "health_checks": [{
            "timeout": _envoy_duration(cfg.health_timeout_s),
            "interval": _envoy_duration(cfg.health_interval_s or 30.0),
            "no_traffic_interval": _envoy_duration(cfg.health_interval_s or 30.0),
            "interval_jitter_percent": int(round(cfg.health_jitter * 100)),
            "unhealthy_threshold": cfg.unhealthy_threshold,
            "healthy_threshold": cfg.healthy_threshold,
            "http_health_check": {"path": cfg.health_path},
        }],
        # passive ejection, Envoy's circuit breaker per host: ejection time grows with
        # every ejection (base x count), capped, as the gateway's breaker open time does
        "outlier_detection": {
            "consecutive_5xx": cfg.breaker_failures,
            "base_ejection_time": _envoy_duration(cfg.breaker_reset_s),
            "max_ejection_time": _envoy_duration(cfg.breaker_max_reset_s),
            "interval": "10s",
            "max_ejection_percent": 100,
        },
        "load_assignment": {
            "cluster_name": UPSTREAM,
            # priority 1 gets traffic only when priority 0 is out: the backups
            "endpoints": [endpoints(primaries, 0)]
            + ([endpoints(backups, 1)] if backups else []),
        },
    }
    if cfg.policy is RoutingPolicy.SESSION_AFFINITY:
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": 1024}

    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3."
                      "HttpConnectionManager",
        "stat_prefix": "babeldesk",
        "codec_type": "AUTO",
        "stream_idle_timeout": _envoy_duration(cfg.read_timeout_s),
        "route_config": {
            "name": "babeldesk",
            "virtual_hosts": [{
                "name": "babeldesk",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": route}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
        }],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": opts.admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "babeldesk",
                "address": {"socket_address": {"address": opts.listen_host,
                                               "port_value": opts.listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm,
                }]}],
            }],
            "clusters": [cluster],
        },
    }


def render_envoy(cfg: FleetConfig, opts: ProxyOptions = ProxyOptions()) -> str:
    head = "# Rendered by `babeldesk deploy envoy` from the fleet config; edit that, not this.\n"
    return head + yaml.safe_dump(envoy_config(cfg, opts), sort_keys=False, width=100)
