"""``babeldesk autoscale run``: the scaling policy as a controller loop, for clusters
without KEDA.

Every ``interval_s`` it reads the offered QPS (from ``/metrics`` counters of the workers
or gateways, or from a Prometheus query), appends a ``Sample`` and applies ``decide`` to the worker
Deployment's ``scale`` subresource.

QPS and capacity must count the same requests: scrape the workers (model requests; the
capacity of a worker bench) or the gateways (every support message; then the capacity
of a bench through a gateway, knowledge-base hits included).

The Kubernetes API is spoken with plain httpx (already a dependency) rather than the
official ``kubernetes`` client: the controller needs two calls (GET and PATCH of
``deployments/<name>/scale``), and the client pulls in a dozen packages (google-auth,
websocket-client, oauthlib, ...) for them. In a pod it uses the service-account token and
CA that Kubernetes mounts; outside, ``--api-server http://127.0.0.1:8001`` with
``kubectl proxy`` works without a token.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from babeldesk.autoscale.policy import PolicyConfig, Sample, decide
from babeldesk.errors import ConfigError, InvalidRequest, Unavailable

PROBE_ROUTES = frozenset({"/health", "/ready", "/metrics"})  # not traffic
REQUESTS_TOTAL = "babeldesk_requests_total"
IN_FLIGHT = "babeldesk_requests_in_flight"
QUEUE_DEPTH = "babeldesk_queue_depth"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")  # in a pod


# --- pure parsers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one ``/metrics`` page says about load."""

    requests_total: float  # counter: requests on the counted routes, all statuses
    in_flight: float  # gauge: HTTP requests being served
    queue_depth: float  # gauge: requests waiting for a batch slot (workers only)


def parse_scrape(text: str, *, routes: Iterable[str] | None = None,
                 exclude: Iterable[str] = PROBE_ROUTES) -> Scrape:
    """Prometheus text exposition -> ``Scrape``. Counts every status (a 429 is demand
    too); only ``routes`` if given, else every route but the probes."""
    keep = set(routes) if routes is not None else None
    drop = set(exclude)
    total = in_flight = queue = 0.0
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise InvalidRequest(f"not Prometheus text exposition: {exc}") from exc
    for family in families:
        for s in family.samples:
            if s.name == REQUESTS_TOTAL:
                route = s.labels.get("route", "")
                if (keep is None and route not in drop) or (keep is not None and route in keep):
                    total += s.value
            elif s.name == IN_FLIGHT:
                in_flight += s.value
            elif s.name == QUEUE_DEPTH:
                queue += s.value
    return Scrape(total, in_flight, queue)


def counter_rate(prev: float, cur: float, dt_s: float) -> float:
    """Per-second rate of a counter between two readings; a drop means the process
    restarted, and the new value is what it counted since (as Prometheus' rate())."""
    if dt_s <= 0:
        raise InvalidRequest("readings must be at increasing times")
    return (cur - prev if cur >= prev else cur) / dt_s


def parse_prometheus_vector(payload: Any) -> float:
    """The JSON of ``/api/v1/query`` for an instant vector -> the sum of its values
    (0 for an empty result: no traffic recorded)."""
    if not isinstance(payload, dict) or payload.get("status") != "success":
        raise Unavailable(f"Prometheus query failed: {str(payload)[:200]}")
    data = payload.get("data") or {}
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar" and isinstance(result, list):
        return float(result[1])  # [time, "value"]
    if kind != "vector" or not isinstance(result, list):
        raise InvalidRequest(f"want an instant vector, Prometheus returned {kind!r}")
    values = [float(item["value"][1]) for item in result]
    return sum(v for v in values if math.isfinite(v))


# --- where QPS comes from -------------------------------------------------------------------


class QpsSource(Protocol):
    def read(self, now: float) -> float | None:
        """Offered requests/s ending at ``now``; None until a rate can be computed."""


class GatewayMetrics:
    """Sums the request counters of one or more ``/metrics`` URLs; QPS from deltas."""

    def __init__(self, urls: Sequence[str], client: httpx.Client,
                 routes: Iterable[str] | None = None) -> None:
        self.urls = list(urls)
        self.client = client
        self.routes = None if routes is None else list(routes)
        self._last: dict[str, tuple[float, float]] = {}  # url -> (time s, counter)
        self.last_scrape: Scrape | None = None

    def read(self, now: float) -> float | None:
        qps = 0.0
        complete = True
        in_flight = queue = total = 0.0
        for url in self.urls:
            try:
                resp = self.client.get(url)
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                raise Unavailable(f"cannot read {url}: {exc}") from exc
            scrape = parse_scrape(resp.text, routes=self.routes)
            total += scrape.requests_total
            in_flight += scrape.in_flight
            queue += scrape.queue_depth
            prev = self._last.get(url)
            self._last[url] = (now, scrape.requests_total)
            if prev is None:
                complete = False
            else:
                qps += counter_rate(prev[1], scrape.requests_total, now - prev[0])
        self.last_scrape = Scrape(total, in_flight, queue)
        return qps if complete else None


class PrometheusQps:
    """QPS from a PromQL query that already returns requests/s."""

    # model requests offered to the workers (answered, queued or refused with 429): the
    # same unit as the capacity per worker replica
    DEFAULT_QUERY = ('sum(rate(babeldesk_requests_total{app="worker",'
                     'route="/v1/chat/completions"}[2m]))')

    def __init__(self, base_url: str, query: str, client: httpx.Client) -> None:
        self.base_url = base_url.rstrip("/")
        self.query = query
        self.client = client

    def read(self, now: float) -> float | None:
        try:
            resp = self.client.get(f"{self.base_url}/api/v1/query",
                                   params={"query": self.query, "time": f"{now:.3f}"})
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise Unavailable(f"Prometheus at {self.base_url}: {exc}") from exc
        return parse_prometheus_vector(resp.json())


# --- where replicas are set -----------------------------------------------------------------


class Scaler(Protocol):
    def get_replicas(self) -> int: ...

    def set_replicas(self, replicas: int) -> None: ...


class DryRunScaler:
    """Keeps the replicas in memory: decisions are printed, nothing is changed."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def get_replicas(self) -> int:
        return self.replicas

    def set_replicas(self, replicas: int) -> None:
        self.replicas = replicas


class KubernetesScaler:
    """GET / PATCH ``apps/v1`` ``deployments/<name>/scale`` over the REST API."""

    def __init__(self, api_server: str, namespace: str, deployment: str,
                 client: httpx.Client, token_file: Path | None = None) -> None:
        self.url = (f"{api_server.rstrip('/')}/apis/apps/v1/namespaces/{namespace}"
                    f"/deployments/{deployment}/scale")
        self.client = client
        self.token_file = token_file

    @classmethod
    def in_cluster(cls, namespace: str | None, deployment: str,
                   timeout_s: float = 10.0) -> KubernetesScaler:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise Unavailable("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset); "
                              "pass --api-server, or use --dry-run")
        ns = namespace or (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
        client = httpx.Client(verify=str(SERVICE_ACCOUNT_DIR / "ca.crt"), timeout=timeout_s)
        return cls(f"https://{host}:{port}", ns, deployment, client,
                   SERVICE_ACCOUNT_DIR / "token")

    def _headers(self) -> dict[str, str]:
        # bound service-account tokens rotate: read the file on every call
        if self.token_file is None:
            return {}
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def _call(self, method: str, *, body: str | None = None,
              content_type: str | None = None) -> dict[str, Any]:
        headers = self._headers()
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            resp = self.client.request(method, self.url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            raise Unavailable(f"Kubernetes API: {exc}") from exc
        if resp.status_code >= 400:
            raise Unavailable(f"Kubernetes API {method} {self.url}: {resp.status_code} "
                              f"{resp.text[:300]}")
        return resp.json()

    def get_replicas(self) -> int:
        return int(self._call("GET").get("spec", {}).get("replicas", 0))

    def set_replicas(self, replicas: int) -> None:
        # a JSON merge patch of the scale subresource: only spec.replicas changes
        self._call("PATCH", body=f'{{"spec":{{"replicas":{int(replicas)}}}}}',
                   content_type="application/merge-patch+json")


def make_source(client: httpx.Client, metrics_urls: Sequence[str] = (),
                prometheus: str | None = None, query: str | None = None,
                routes: Sequence[str] = ()) -> QpsSource:
    """Where the offered QPS is read: the workers' own /metrics, or a Prometheus query."""
    if bool(metrics_urls) == bool(prometheus):
        raise ConfigError("--metrics-url / --prometheus",
                          "give --metrics-url (one or more) or --prometheus")
    if metrics_urls:
        return GatewayMetrics(list(metrics_urls), client, routes=list(routes) or None)
    return PrometheusQps(prometheus or "", query or PrometheusQps.DEFAULT_QUERY, client)


def make_scaler(client: httpx.Client, *, deployment: str, namespace: str | None = None,
                api_server: str | None = None, token_file: Path | None = None,
                dry_run: bool = False, replicas: int | None = None) -> Scaler:
    """The Deployment's scale: through ``api_server`` (e.g. kubectl proxy) or in-cluster.
    A dry run starts from ``replicas`` or reads them once, then changes nothing."""
    scaler: Scaler
    if dry_run and replicas is not None:
        return DryRunScaler(replicas)
    if api_server is not None:
        scaler = KubernetesScaler(api_server, namespace or "default", deployment, client,
                                  token_file)
    elif dry_run and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError("--dry-run", "a dry run outside a cluster needs --replicas N "
                          "(or --api-server to read it)")
    else:
        scaler = KubernetesScaler.in_cluster(namespace, deployment)
    return DryRunScaler(scaler.get_replicas()) if dry_run else scaler


# --- the loop -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    at: float  # POSIX seconds
    qps: float  # offered requests/s over the last interval
    replicas: int  # replicas before the decision (the sample's)
    desired: int  # what decide() returned
    applied: bool  # the scaler was asked to change (False in a steady state or dry run)
    in_flight: float | None = None  # summed requests in flight, for the log


def run_controller(source: QpsSource, scaler: Scaler, policy: PolicyConfig, *,
                   interval_s: float, iterations: int, dry_run: bool,
                   on_decision: Callable[[Decision], None],
                   on_error: Callable[[Exception], None] | None = None,
                   clock: Callable[[], float] = time.time,
                   sleep: Callable[[float], None] = time.sleep) -> list[Decision]:
    """Read, decide, scale; ``iterations`` reads (0 = until interrupted). The first read
    only sets the counters' baseline. With ``on_error``, a failed read or scale call is
    reported and the loop goes on (the gap in samples keeps ``decide`` from scaling up on
    stale data); without it, the error propagates."""
    history: list[Sample] = []
    decisions: list[Decision] = []
    n = 0
    while iterations == 0 or n < iterations:
        if n:
            sleep(interval_s)
        n += 1
        now = clock()
        try:
            qps = source.read(now)
            if qps is None:
                continue
            current = scaler.get_replicas()
            history.append(Sample(now, qps, current))
            horizon = now - policy.history_horizon_s
            history = [s for s in history if s.at >= horizon]
            desired = decide(history, now, policy)
            if desired != current:
                scaler.set_replicas(desired)
        except Unavailable as exc:
            if on_error is None:
                raise
            on_error(exc)
            continue
        scrape = getattr(source, "last_scrape", None)
        decision = Decision(now, qps, current, desired, desired != current and not dry_run,
                            None if scrape is None else scrape.in_flight)
        decisions.append(decision)
        on_decision(decision)
    return decisions
