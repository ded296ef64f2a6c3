"""The ``fleet`` section: the upstream pool, health checks, breakers, routing, retries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from babeldesk.config.check import check


class RoutingPolicy(str, enum.Enum):
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    SESSION_AFFINITY = "session_affinity"  # consistent hash on the session id


@dataclass(frozen=True)
class UpstreamConfig:
    """One OpenAI-compatible server, as a line of an nginx ``upstream`` block.

    ``url`` is the base (``http://host:port``, no ``/v1``). A DNS name that resolves to
    several addresses (a Kubernetes headless Service) becomes one upstream per address.
    In YAML a bare string is the url; in env vars a comma-separated list of urls.
    """

    url: str
    weight: int = 1  # relative share of new requests / sessions
    backup: bool = False  # used only when every primary is out

    def __post_init__(self) -> None:
        check("fleet.upstreams.url", self.url.startswith(("http://", "https://")),
               f"must be an http(s) URL, got {self.url!r}")
        check("fleet.upstreams.weight", self.weight >= 1, "must be >= 1")


@dataclass(frozen=True)
class FleetConfig:
    upstreams: tuple[UpstreamConfig, ...] = ()
    upstreams_file: str = ""  # YAML list of upstreams, re-read on change; "" = none
    file_check_interval_s: float = 2.0  # seconds between mtime checks of upstreams_file
    hosts_file: str = ""  # hosts(5)-format overrides consulted before DNS; "" = none
    dns_refresh_s: float = 30.0  # seconds between re-resolutions of DNS names; 0 = once
    policy: RoutingPolicy = RoutingPolicy.SESSION_AFFINITY
    session_header: str = "x-session-id"  # affinity key for OpenAI passthrough
    health_path: str = "/ready"
    health_interval_s: float = 30.0  # between probes of one upstream; 0 = no probes
    health_timeout_s: float = 2.0
    health_jitter: float = 0.1  # each interval is scaled by a random 1 +- jitter
    unhealthy_threshold: int = 2  # consecutive failed probes -> out of rotation
    healthy_threshold: int = 1  # consecutive passed probes -> back in rotation
    breaker_failures: int = 5  # consecutive failed calls -> breaker opens
    breaker_reset_s: float = 30.0  # open -> half-open after this (first opening)
    breaker_max_reset_s: float = 300.0  # cap of the doubling open time
    breaker_half_open_trials: int = 1  # concurrent trial calls while half-open
    connect_timeout_s: float = 2.0
    # request sent -> headers + first SSE event; a non-streamed answer's headers come
    # only when it is generated, so this must exceed the longest generation
    first_byte_timeout_s: float = 60.0
    read_timeout_s: float = 60.0  # longest gap between two chunks of an answer
    retry_attempts: int = 3  # tries per request, the first included
    retry_deadline_s: float = 120.0  # total seconds to get a first byte, all tries
    retry_budget_ratio: float = 0.2  # retries in flight <= this share of requests in flight
    retry_budget_min: int = 3  # retries in flight always allowed
    # while more than this share of upstreams is healthy (in rotation, breaker closed, last
    # call ok), a retry is granted whatever the budget says; >= 1: the budget always rules
    retry_budget_healthy_share: float = 0.5
    max_connections: int = 256  # per fleet client, all upstreams together
    # idle keep-alive connections kept, all upstreams together (at most max_connections)
    max_keepalive: int = 256
    api_key: str = field(default="", repr=False)  # bearer token sent to upstreams; "" = none

    def __post_init__(self) -> None:
        for key in ("file_check_interval_s", "health_timeout_s", "breaker_reset_s",
                    "connect_timeout_s", "first_byte_timeout_s", "read_timeout_s",
                    "retry_deadline_s"):
            check(f"fleet.{key}", getattr(self, key) > 0, "must be > 0")
        for key in ("dns_refresh_s", "health_interval_s", "retry_budget_ratio",
                    "retry_budget_min", "retry_budget_healthy_share"):
            check(f"fleet.{key}", getattr(self, key) >= 0, "must be >= 0")
        check("fleet.health_jitter", 0 <= self.health_jitter < 1, "must be in [0, 1)")
        check("fleet.health_path", self.health_path.startswith("/"), "must start with /")
        for key in ("unhealthy_threshold", "healthy_threshold", "breaker_failures",
                    "breaker_half_open_trials", "retry_attempts", "max_connections"):
            check(f"fleet.{key}", getattr(self, key) >= 1, "must be >= 1")
        check("fleet.breaker_max_reset_s", self.breaker_max_reset_s >= self.breaker_reset_s,
               "must be >= fleet.breaker_reset_s")
        check("fleet.max_keepalive", self.max_keepalive >= 0, "must be >= 0")
        check("fleet.session_header", bool(self.session_header), "must name a header")
        names = [u.url for u in self.upstreams]
        check("fleet.upstreams", len(names) == len(set(names)), "duplicate url")
