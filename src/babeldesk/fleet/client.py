"""The fleet: pick an upstream, call it, retry elsewhere before the first byte, relay SSE.

``Fleet`` owns the pool, the health checker, the breakers, the router and the retry
budget; the gateway holds one, serves ``Fleet.request`` for OpenAI passthrough and
``admin_snapshot`` for ``GET /v1/admin/upstreams``, and gives ``support`` a
``FleetChatModel`` (``chat.py``: the ``ChatModel`` protocol over the fleet). One try on
one upstream is an ``Attempt`` (``attempt.py``); this module decides which upstream and
whether to try again.

Failure rules. A timeout, a connection error, a 5xx or a stream that breaks count against
the upstream's breaker; a 4xx does not (it is the client's fault) and is returned as is.
A 5xx, a 429, a timeout or a connection error *before the first byte of the answer is
committed* is retried at once on another upstream (``retry_attempts`` tries in all, within
``retry_deadline_s``, if the retry budget allows; while most of the fleet is healthy the
budget holds no retry back, so a dead worker's requests in flight go elsewhere). A
streamed answer is committed when its first whole SSE event arrives; a stream that breaks
after that is ended with an error event (``data: {"error": ...}``, no ``[DONE]``), never
replayed elsewhere, so the customer never sees text twice.

``upstream_requests_total{outcome}``: ok, client_error (4xx), rate_limited (429),
server_error (5xx), timeout, connect_error, protocol_error (bad or empty answer before the
first byte), broken_stream (after it), cancelled (the caller went away).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import time
from typing import Any, Callable, Mapping

from babeldesk.config import FleetConfig
from babeldesk.errors import BabeldeskError, Unavailable
from babeldesk.fleet.attempt import Attempt, AttemptFailed, UpstreamReply
from babeldesk.fleet.breaker import BreakerState, CircuitBreaker, Permit
from babeldesk.fleet.discovery import (
    FileWatch,
    Resolve,
    Resolver,
    expand,
    flatten,
    read_upstreams_file,
)
from babeldesk.fleet.health import HealthChecker
from babeldesk.fleet.http import HTTPClient
from babeldesk.fleet.pool import Pool, Target, Upstream
from babeldesk.fleet.retry import RetryBudget
from babeldesk.fleet.routing import make_router
from babeldesk.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"

# The upstreams that answered the model calls of the current request, in order: a caller
# (the gateway, per support message) sets a fresh list; ``Fleet.request`` appends to it.
upstreams_used: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "babeldesk_upstreams_used", default=None)


def _state_of(up: Upstream) -> Callable[[], float]:
    return lambda: float(up.breaker.state.gauge)


def _healthy_of(up: Upstream) -> Callable[[], float]:
    return lambda: 1.0 if up.healthy else 0.0


class Fleet:
    def __init__(
        self,
        cfg: FleetConfig,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        resolve: Resolve | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._clock = clock  # seconds, monotonic: breakers, deadline, budget
        headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        self._client = HTTPClient(
            connect_timeout_s=cfg.connect_timeout_s, read_timeout_s=cfg.read_timeout_s,
            max_connections=cfg.max_connections, max_keepalive=cfg.max_keepalive,
            headers=headers)
        self.pool = Pool(lambda: CircuitBreaker(
            cfg.breaker_failures, cfg.breaker_reset_s, cfg.breaker_max_reset_s,
            cfg.breaker_half_open_trials, clock))
        self.router = make_router(cfg.policy, rng)
        self.health = HealthChecker(cfg, self._client, rng=rng)
        self.budget = RetryBudget(cfg.retry_budget_ratio, cfg.retry_budget_min)
        self._resolve = resolve or Resolver(cfg.hosts_file)
        self._file_watch = FileWatch(cfg.upstreams_file) if cfg.upstreams_file else None
        self._file_specs: tuple[Any, ...] = ()
        self._expanded: dict[str, list[Target]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._counts: dict[tuple[str, str], Any] = {}  # (upstream, outcome) -> counter child
        self._durations: dict[str, Any] = {}  # upstream -> histogram child

    # --- membership ------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve the upstreams, start health checks, file and DNS watching."""
        await self.refresh()
        if self._file_watch is not None:
            self._tasks.append(asyncio.create_task(
                self._every(self.cfg.file_check_interval_s, self._reload_if_changed),
                name="fleet:file"))
        if self.cfg.dns_refresh_s > 0:
            self._tasks.append(asyncio.create_task(
                self._every(self.cfg.dns_refresh_s, self.refresh), name="fleet:dns"))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.health.aclose()
        await self._client.aclose()

    async def _every(self, interval_s: float, fn: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except Exception:  # keep the last good pool; say why
                log.exception("fleet: refresh failed")

    async def _reload_if_changed(self) -> None:
        if self._file_watch is not None and self._file_watch.changed():
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read the upstreams file (if it changed), re-resolve names, update the pool."""
        if self._file_watch is not None:
            self._file_watch.changed()  # take the stamp of what we read now
            try:
                self._file_specs = read_upstreams_file(self.cfg.upstreams_file)
            except BabeldeskError as exc:  # a half-written file: keep the last good list
                log.warning("fleet: %s; keeping %d upstreams from it",
                            exc.message, len(self._file_specs))
        specs = list(self.cfg.upstreams) + [
            s for s in self._file_specs if s.url not in {u.url for u in self.cfg.upstreams}]
        self._expanded = await expand(specs, self._resolve, self._expanded)
        added, removed = self.pool.set_targets(flatten(self._expanded))
        self.router.rebuild(self.pool.upstreams)
        self.health.watch(self.pool.upstreams)
        if added or removed:
            log.info("fleet: +%s -%s", [u.name for u in added], [u.name for u in removed])
        if self.metrics is not None:
            for up in removed:
                for g in (self.metrics.upstream_state, self.metrics.upstream_healthy):
                    try:
                        g.remove(up.name)
                    except KeyError:
                        pass
            for up in added:  # read at scrape time: always the live state
                self.metrics.upstream_state.labels(up.name).set_function(_state_of(up))
                self.metrics.upstream_healthy.labels(up.name).set_function(_healthy_of(up))

    # --- live state ------------------------------------------------------------------------

    def admin_snapshot(self) -> dict[str, Any]:
        """What ``GET /v1/admin/upstreams`` shows: every upstream's live state."""
        ups = self.pool.snapshot()
        return {
            "policy": self.cfg.policy.value,
            "usable": sum(1 for u in ups if u["usable"]),
            "upstreams": ups,
            "retry_budget": self.budget.snapshot(),
        }

    @property
    def ready(self) -> bool:
        """At least one upstream is in rotation (the gateway's ``/ready``)."""
        return bool(self.pool.usable())

    def candidates(self, session_id: str | None = None) -> list[Upstream]:
        return self.router.order(self.pool.usable(), session_id)

    # --- calls -----------------------------------------------------------------------------

    async def request(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        stream: bool | None = None,
        path: str = CHAT_PATH,
        method: str = "POST",
        session_id: str | None = None,
    ) -> UpstreamReply:
        """Send one OpenAI request (raw passthrough) to the best upstream, retrying elsewhere
        before the first byte. ``body["stream"]`` true: the reply streams SSE events.
        ``raw``: the JSON bytes as the client sent them (no re-encoding), with ``stream``
        said explicitly. Raises ``Unavailable`` when no upstream could answer."""
        cfg = self.cfg
        payload = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        streaming = bool(body and body.get("stream")) if stream is None else stream
        deadline = self._clock() + cfg.retry_deadline_s  # seconds, monotonic
        # the preference order is fixed once per request (a retry must not advance the
        # round robin); a retry takes the next upstream of it whose breaker lets it in
        order = self.candidates(session_id)
        why = "no upstream is in rotation"
        fallback: UpstreamReply | None = None
        failed: set[str] = set()  # upstreams this request failed on
        last = ""  # the outcome of the last failed attempt
        for attempt in range(cfg.retry_attempts):
            remaining = deadline - self._clock()
            if remaining <= 0:
                why += f"; retry deadline of {cfg.retry_deadline_s:g}s passed"
                break
            picked = self._pick(order)
            if picked is None:
                break
            up, permit = picked
            retry = attempt > 0
            # a 429 is a full worker, not a broken one: its retry is always budgeted
            forced = retry and last != "rate_limited" and self._mostly_healthy(failed)
            if retry and not self.budget.try_retry(self.in_flight(), forced=forced):
                permit.release()
                why += "; retry budget exhausted"
                break
            call = Attempt(self._client, up, permit, record=self._record,
                           clock=self._clock, session_header=cfg.session_header)
            try:
                reply = await call.run(method, path, payload, streaming, session_id,
                                       min(cfg.first_byte_timeout_s, remaining))
                used = upstreams_used.get()
                if used is not None:
                    used.append(up.name)
                return reply
            except AttemptFailed as exc:
                failed.add(up.name)
                last = exc.outcome
                why = f"attempt {attempt + 1}: {exc.outcome}"  # no address: clients see it
                fallback = exc.reply or fallback
                log.warning("fleet: attempt %d failed on %s: %s", attempt + 1, up.name,
                            exc.message)
            finally:
                if retry:
                    self.budget.done()
        if fallback is not None:
            return fallback
        raise Unavailable(f"no upstream answered ({why})")

    def in_flight(self) -> int:
        """Requests being answered by upstreams now, all together."""
        return sum(u.outstanding for u in self.pool.upstreams)

    def _mostly_healthy(self, failed: set[str]) -> bool:
        """Is more than ``retry_budget_healthy_share`` of the pool healthy: in rotation,
        breaker closed, last call a success, and not one of ``failed``? Then a retry is
        forced past the budget (retry.py says why)."""
        ups = self.pool.upstreams
        healthy = sum(1 for u in ups if u.name not in failed and u.healthy
                      and u.breaker.state is BreakerState.CLOSED
                      and u.breaker.consecutive_failures == 0)
        return bool(ups) and healthy > self.cfg.retry_budget_healthy_share * len(ups)

    def _pick(self, order: list[Upstream]) -> tuple[Upstream, Permit] | None:
        """Take the first upstream of ``order`` whose breaker grants a permit, off it."""
        while order:
            up = order.pop(0)
            if not up.healthy:
                continue
            permit = up.breaker.acquire()
            if permit is not None:
                return up, permit
        return None

    def _record(self, up: Upstream, outcome: str, started: float) -> None:
        up.outcomes[outcome] += 1
        m = self.metrics
        if m is not None:  # labelled children looked up once (``labels()`` locks and hashes)
            count = self._counts.get((up.name, outcome))
            if count is None:
                count = self._counts[(up.name, outcome)] = m.upstream_requests_total.labels(
                    up.name, outcome)
            duration = self._durations.get(up.name)
            if duration is None:
                duration = self._durations[up.name] = m.upstream_duration_seconds.labels(
                    up.name)
            count.inc()
            duration.observe(self._clock() - started)
