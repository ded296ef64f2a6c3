"""The fleet: pick an upstream, call it, retry elsewhere before the first byte, relay SSE.

``Fleet`` owns the pool, the health checker, the breakers, the router and the retry
budget; the gateway holds one, serves ``Fleet.request`` for OpenAI passthrough and
``admin_snapshot`` for ``GET /v1/admin/upstreams``, and gives ``support`` a
``FleetChatModel`` (the ``ChatModel`` protocol over the fleet).

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
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

from babeldesk.config import FleetConfig
from babeldesk.errors import BabeldeskError, InvalidRequest, QueueFull, Unavailable
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
from babeldesk.fleet.http import ConnectError, HTTPClient, HTTPError, Response, Timeout
from babeldesk.fleet.pool import Pool, Target, Upstream
from babeldesk.fleet.retry import RetryBudget
from babeldesk.fleet.routing import make_router
from babeldesk.sse import Chunk, EventSplitter, error_event, event_data, parse_chunk
from babeldesk.telemetry.metrics import Metrics
from babeldesk.types import ChatRequest, TextDelta, Usage

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"

# The upstreams that answered the model calls of the current request, in order: a caller
# (the gateway, per support message) sets a fresh list; ``Fleet.request`` appends to it.
upstreams_used: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "babeldesk_upstreams_used", default=None)


@dataclass
class UpstreamReply:
    """An upstream's answer. Exactly one of ``body`` (whole answer) or ``stream`` (SSE
    events, each whole, ending in ``[DONE]`` or in an error event) is set."""

    status: int
    content_type: str
    upstream: str  # the upstream's name (base url)
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    headers: Mapping[str, str] | None = None  # e.g. retry-after
    _close: Callable[[], Awaitable[None]] | None = None  # settles a stream not read to the end

    async def aclose(self) -> None:
        """Stop reading: frees the upstream (always call it, or read the stream to its end)."""
        if self.stream is not None:
            await self.stream.aclose()  # type: ignore[attr-defined]
        if self._close is not None:
            await self._close()


class _Failed(Exception):
    """One attempt failed before the first byte; ``outcome`` is the metric label."""

    def __init__(self, outcome: str, message: str, reply: UpstreamReply | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message
        self.reply = reply  # a 5xx / 429 answer, returned if no retry does better


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
            try:
                reply = await self._attempt(up, permit, method, path, payload, streaming,
                                            session_id, min(cfg.first_byte_timeout_s, remaining))
                used = upstreams_used.get()
                if used is not None:
                    used.append(up.name)
                return reply
            except _Failed as exc:
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

    async def _attempt(
        self, up: Upstream, permit: Permit, method: str, path: str, payload: bytes | None,
        streaming: bool, session_id: str | None, timeout_s: float,
    ) -> UpstreamReply:
        headers = {"content-type": "application/json"} if payload is not None else {}
        if up.target.host_header:
            headers["host"] = up.target.host_header
        if session_id:
            headers[self.cfg.session_header] = session_id
        started = self._clock()
        up.outstanding += 1
        resp: Response | None = None
        committed = False
        try:
            async with asyncio.timeout(timeout_s):
                resp = await self._client.request(method, up.name, path, body=payload,
                                                  headers=headers)
                status = resp.status
                ctype = resp.headers.get("content-type", "")
                if status >= 500 or status == 429:
                    body = await resp.read()
                    reply = UpstreamReply(status, ctype, up.name, body=body,
                                          headers={k: v for k, v in resp.headers.items()
                                                   if k.lower() == "retry-after"})
                    raise _Failed("server_error" if status >= 500 else "rate_limited",
                                  f"answered {status}", reply)
                if not (streaming and status == 200 and "text/event-stream" in ctype):
                    body = await resp.read()
                    if status == 200 and not body:
                        raise _Failed("protocol_error", "empty answer")
                    permit.success()
                    self._record(up, "ok" if status < 400 else "client_error", started)
                    up.outstanding -= 1
                    committed = True
                    return UpstreamReply(status, ctype, up.name, body=body)
                # streaming: commit only once the first whole event is here and is no error
                chunks = resp.aiter_bytes()
                splitter = EventSplitter()
                first: list[bytes] = []
                while not first:
                    try:
                        first = splitter.feed(await anext(chunks))
                    except StopAsyncIteration:
                        raise _Failed("protocol_error", "stream ended before any event")
                for ev in first:
                    data = event_data(ev)
                    if data is not None and parse_chunk(data).error:
                        raise _Failed("server_error", f"stream began with an error: {data[:200]}")
            committed = True
            done = False

            def finish(outcome: str, error: str) -> None:  # once, whoever ends the stream
                nonlocal done
                if done:
                    return
                done = True
                up.outstanding -= 1
                if outcome == "ok":
                    permit.success()
                elif outcome == "cancelled":
                    permit.release()
                else:
                    permit.failure()
                    up.last_error = error
                    log.warning("fleet: stream from %s broke: %s", up.name, error)
                self._record(up, outcome, started)

            async def close(resp: Response = resp) -> None:
                await resp.aclose()  # idempotent; a relay never started did not run its finally
                finish("cancelled", "")

            relay = self._relay(resp, chunks, splitter, first, finish)
            return UpstreamReply(status, ctype, up.name, stream=relay, _close=close)
        except _Failed as exc:
            self._fail(up, permit, exc.outcome, exc.message, started)
            raise
        except TimeoutError:
            msg = f"no first byte within {timeout_s:.3g}s"
            self._fail(up, permit, "timeout", msg, started)
            raise _Failed("timeout", msg) from None
        except HTTPError as exc:
            outcome = "timeout" if isinstance(exc, Timeout) else (
                "connect_error" if isinstance(exc, ConnectError) else "protocol_error")
            msg = f"{type(exc).__name__}: {exc}"
            self._fail(up, permit, outcome, msg, started)
            raise _Failed(outcome, msg) from None
        except BaseException:  # cancelled: the caller went away
            permit.release()
            self._record(up, "cancelled", started)
            raise
        finally:
            if not committed:
                up.outstanding -= 1
                if resp is not None:
                    await resp.aclose()

    def _fail(self, up: Upstream, permit: Permit, outcome: str, message: str,
              started: float) -> None:
        if outcome == "rate_limited":
            permit.success()  # a 429 is the upstream working as designed
        else:
            permit.failure()
        up.last_error = message
        self._record(up, outcome, started)

    async def _relay(
        self, resp: Response, chunks: AsyncIterator[bytes], splitter: EventSplitter,
        first: list[bytes], finish: Callable[[str, str], None],
    ) -> AsyncIterator[bytes]:
        """Yield whole SSE events; end a broken stream with one error event."""
        outcome, error = "cancelled", ""  # what a GeneratorExit / cancellation leaves
        try:
            pending = list(first)
            while True:
                for ev in pending:
                    data = event_data(ev)
                    chunk = parse_chunk(data) if data is not None else None
                    if chunk is not None and chunk.done:
                        outcome = "ok"  # settled before the caller sees [DONE] and leaves
                        yield ev
                        return
                    if chunk is not None and chunk.error:  # the upstream's own error event
                        outcome, error = "broken_stream", chunk.error
                        yield ev
                        return
                    yield ev
                try:
                    pending = splitter.feed(await anext(chunks))
                except StopAsyncIteration:
                    outcome, error = "broken_stream", "the upstream closed the stream early"
                    break
                except HTTPError as exc:
                    outcome = "broken_stream"
                    error = f"the upstream stream broke ({type(exc).__name__}: {exc})"
                    break
        finally:
            await resp.aclose()
            finish(outcome, error)
        yield error_event(f"{error}; the answer is incomplete")


class FleetChatModel:
    """The ``ChatModel`` protocol over a fleet of OpenAI-compatible workers."""

    def __init__(self, fleet: Fleet, model: str) -> None:
        self.fleet = fleet
        self._model = model  # the upstreams' served model name (vLLM checks it)

    @property
    def model_name(self) -> str:
        return self._model

    def body(self, request: ChatRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.max_tokens is not None:
            body["max_tokens"] = p.max_tokens
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        return body

    async def stream_chat(
        self, request: ChatRequest, *, session_id: str | None = None,
    ) -> AsyncIterator[TextDelta]:
        """Text deltas, then one final delta with finish_reason and usage. A stream broken
        midway ends with ``finish_reason="error"`` and ``error`` set. Raises before the
        first delta: ``Unavailable`` (no upstream), ``QueueFull``, ``InvalidRequest``."""
        session_id = session_id or request.session_id
        reply = await self.fleet.request(self.body(request), session_id=session_id)
        if reply.stream is None:
            raise _http_error(reply)
        completion = 0
        finish = None
        usage: Usage | None = None
        splitter_done = False
        try:
            async for ev in reply.stream:
                data = event_data(ev)
                if data is None:
                    continue
                chunk: Chunk = parse_chunk(data)
                if chunk.done:
                    splitter_done = True
                    break
                if chunk.error:
                    yield TextDelta("", "error", usage or Usage(0, completion), chunk.error)
                    return
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.text:
                    completion += 1
                    yield TextDelta(chunk.text)
        finally:
            await reply.aclose()
        if not splitter_done:  # the relay always ends with [DONE] or an error event
            yield TextDelta("", "error", usage or Usage(0, completion), "stream ended early")
            return
        yield TextDelta("", finish or "stop", usage or Usage(0, completion))


def _http_error(reply: UpstreamReply) -> BabeldeskError:
    message = f"the model server answered {reply.status}"  # no internal address
    try:
        err = json.loads(reply.body or b"{}").get("error") or {}
        message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    if reply.status == 429:
        return QueueFull(message)
    if 400 <= reply.status < 500:
        return InvalidRequest(message)
    return Unavailable(message)
