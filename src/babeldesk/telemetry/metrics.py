"""Prometheus metrics, named as in DESIGN.md (prefix ``babeldesk_``).

One ``Metrics`` object per app, on its own registry (no module-level state), so tests and
several apps in one process do not collide. Buckets run from sub-millisecond (cache hits)
to a minute (long generations).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# seconds
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
)
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)

PREFIX = "babeldesk_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric of DESIGN.md. ``app`` is the ``app`` label (gateway, worker, serve)."""

    def __init__(self, app: str, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = PREFIX
        # HTTP
        self.requests_total = Counter(
            p + "requests_total", "HTTP requests by route and status",
            ["app", "route", "status"], registry=r)
        self.request_duration_seconds = Histogram(
            p + "request_duration_seconds", "HTTP request duration (full response)",
            ["app", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests_in_flight = Gauge(
            p + "requests_in_flight", "HTTP requests being served now", ["app"], registry=r)
        self.rate_limited_total = Counter(
            p + "rate_limited_total", "Requests refused (429) by a rate limit",
            ["surface", "limit"], registry=r)
        # engine
        self.time_to_first_token_seconds = Histogram(
            p + "time_to_first_token_seconds", "Arrival to first generated token",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency_seconds = Histogram(
            p + "inter_token_latency_seconds", "Gap between consecutive tokens of a sequence",
            buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            p + "queue_depth", "Requests waiting for a batch slot", registry=r)
        self.running_sequences = Gauge(
            p + "running_sequences", "Sequences in the running batch", registry=r)
        self.queue_wait_seconds = Histogram(
            p + "queue_wait_seconds", "Arrival to admission into the running batch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            p + "batch_size", "Sequences per engine step", buckets=BATCH_BUCKETS, registry=r)
        self.tokens_generated_total = Counter(
            p + "tokens_generated_total", "Generated (completion) tokens", registry=r)
        self.prompt_tokens_total = Counter(
            p + "prompt_tokens_total", "Prompt tokens prefilled", registry=r)
        self.prefix_cache_tokens_total = Counter(
            p + "prefix_cache_tokens_total",
            "Prompt tokens whose KV was kept from an earlier request, not prefilled", registry=r)
        self.effective_max_batch_size = Gauge(
            p + "effective_max_batch_size",
            "Batch limit in force (lowered after out-of-memory)", registry=r)
        self.oom_events_total = Counter(
            p + "oom_events_total", "Engine steps that ran out of memory and were split",
            registry=r)
        self.engine_requests_total = Counter(
            p + "engine_requests_total", "Finished engine requests by finish reason",
            ["finish_reason"], registry=r)
        # support
        self.messages_total = Counter(
            p + "messages_total", "Support messages by language and answer source",
            ["language", "source"], registry=r)
        self.handoffs_total = Counter(
            p + "handoffs_total", "Conversations handed to a human, by reason",
            ["reason"], registry=r)
        self.cache_lookups_total = Counter(
            p + "cache_lookups_total", "Answer cache lookups", ["kind", "result"], registry=r)
        # resolution (support/resolution.py): handed_off and resolved_confirmed as they
        # happen; resolved_assumed needs a quiet window, so `babeldesk report` counts it
        self.conversations_total = Counter(
            p + "conversations_total", "Conversations by outcome as it happens",
            ["outcome", "language", "intent"], registry=r)
        self.ratings_total = Counter(
            p + "ratings_total", "Customer ratings of answers (thumbs up / down)",
            ["value", "language", "intent"], registry=r)
        # human agents (support/agents.py)
        self.agent_queue_depth = Gauge(
            p + "agent_queue_depth", "Conversations waiting for an agent (as last listed)",
            registry=r)
        self.agent_wait_seconds = Histogram(
            p + "agent_wait_seconds", "From the handoff to an agent's claim",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600), registry=r)
        self.retrieval_duration_seconds = Histogram(
            p + "retrieval_duration_seconds", "Help-center retrieval per message (query "
            "embedding, BM25, fusion)", buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5),
            registry=r)
        # fleet
        self.upstream_requests_total = Counter(
            p + "upstream_requests_total", "Upstream calls by outcome",
            ["upstream", "outcome"], registry=r)
        self.upstream_state = Gauge(
            p + "upstream_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
            ["upstream"], registry=r)
        self.upstream_healthy = Gauge(
            p + "upstream_healthy", "1 if the last health checks passed", ["upstream"],
            registry=r)
        self.upstream_duration_seconds = Histogram(
            p + "upstream_duration_seconds", "Upstream call duration", ["upstream"],
            buckets=LATENCY_BUCKETS, registry=r)
        # GPU (set only when NVML finds a GPU; absent otherwise, never faked)
        self.gpu_utilization_ratio = Gauge(
            p + "gpu_utilization_ratio", "GPU utilisation 0..1", ["gpu"], registry=r)
        self.gpu_memory_used_bytes = Gauge(
            p + "gpu_memory_used_bytes", "GPU memory used", ["gpu"], registry=r)
        self.gpu_memory_total_bytes = Gauge(
            p + "gpu_memory_total_bytes", "GPU memory total", ["gpu"], registry=r)

    def in_flight(self) -> int:
        """HTTP requests of this app being served now (for draining)."""
        return int(self.requests_in_flight.labels(self.app)._value.get())

    def render(self) -> bytes:
        """Prometheus text exposition of this registry."""
        return generate_latest(self.registry)


class EngineMetrics:
    """``types.EngineReporter`` over ``Metrics``: what the engine reports becomes the
    engine's Prometheus metrics (the engine never imports telemetry)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def queue(self, waiting: int, running: int) -> None:
        self.metrics.queue_depth.set(waiting)
        self.metrics.running_sequences.set(running)

    def batch_limit(self, size: int) -> None:
        self.metrics.effective_max_batch_size.set(size)

    def out_of_memory(self) -> None:
        self.metrics.oom_events_total.inc()

    def step(self, batch: int, prompt_tokens: int, reused_tokens: int) -> None:
        m = self.metrics
        m.batch_size.observe(batch)
        m.prompt_tokens_total.inc(prompt_tokens)
        m.prefix_cache_tokens_total.inc(reused_tokens)

    def token(self, *, ttft_s: float | None = None, queue_wait_s: float | None = None,
              gap_s: float | None = None) -> None:
        m = self.metrics
        m.tokens_generated_total.inc()
        if ttft_s is not None:
            m.time_to_first_token_seconds.observe(ttft_s)
        if queue_wait_s is not None:
            m.queue_wait_seconds.observe(queue_wait_s)
        if gap_s is not None:
            m.inter_token_latency_seconds.observe(gap_s)

    def finished(self, reason: str) -> None:
        self.metrics.engine_requests_total.labels(reason).inc()
