"""Abuse controls: moving-window rate limits with the ``limits`` library, on memory (one
process) or on Redis (every gateway replica counts into the same windows, so N replicas
enforce one limit, not N: the bug LiteLLM carried for years, BerriAI/litellm #2730).

What is limited (``LimitsConfig``; "" turns one off):
- ``ip_messages``: support messages per client IP (the middleware, before the body);
- ``session_messages``: messages per session id (the support handler, once parsed);
- ``key_requests``: operator-surface requests per operator key (the middleware, after
  auth, so the key's name is known);
- ``key_tokens``: tokens an operator key's OpenAI calls generated (``TokenMeter``: a call
  is refused while the key's window is full; a finished answer's ``usage`` is counted,
  a stream's content events when it carries no usage; a call that started under the
  limit finishes, as LiteLLM's and Envoy's token limits do);
- ``session_tokens``: model-generated tokens per session (``gateway/metered.py``).
A request over a limit gets 429 ``rate_limit_error`` with Retry-After (seconds until the
window lets one more in) and counts in ``babeldesk_rate_limited_total{surface,limit}``.
If the limit storage is unreachable the request passes and the error is logged: a Redis
outage must not take the support chat down with it (``/ready`` reports the sessions store).
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from babeldesk.config import LimitsConfig
from babeldesk.edge.auth import RouteLabel
from babeldesk.edge.errors import error_response
from babeldesk.errors import RateLimited

log = logging.getLogger(__name__)


def _item(spec: str) -> RateLimitItem | None:
    return parse(spec) if spec else None


def storage_uri(url: str) -> str:
    """``memory://`` | ``redis://…`` | ``rediss://…`` -> the ``limits`` async storage URI."""
    return "async+" + url


class Limiter:
    """The configured limits over one storage; ``check`` raises ``RateLimited``."""

    def __init__(self, cfg: LimitsConfig, metrics: Any = None) -> None:
        self.cfg = cfg
        options: dict[str, Any] = {}
        if cfg.storage_url.startswith(("redis://", "rediss://")):
            options["implementation"] = "redispy"  # the redis client babeldesk already has
            # after a Redis restart every pooled connection is stale: without a retry the
            # first request on each failed open (20 of 20 in a burst, measured)
            options["retry"] = Retry(NoBackoff(), 1)
        self.storage = storage_from_string(storage_uri(cfg.storage_url), **options)
        self.window = MovingWindowRateLimiter(self.storage)
        self.items = {"ip_messages": _item(cfg.ip_messages),
                      "session_messages": _item(cfg.session_messages),
                      "key_requests": _item(cfg.key_requests),
                      "key_tokens": _item(cfg.key_tokens),
                      "session_tokens": _item(cfg.session_tokens)}
        self.metrics = metrics

    def enabled(self, limit: str) -> bool:
        return self.items.get(limit) is not None

    async def room(self, limit: str, who: str, surface: str) -> None:
        """Raise ``RateLimited`` if ``who``'s window of ``limit`` is full (counts nothing)."""
        await self._enforce(limit, who, surface, count=False)

    async def spend(self, limit: str, who: str, amount: int) -> None:
        """Count ``amount`` (generated tokens) already used; fills the window at most."""
        item = self.items.get(limit)
        if item is None or amount <= 0:
            return
        try:
            stats = await self.window.get_window_stats(item, "babeldesk", limit, who)
            amount = min(amount, stats.remaining)
            if amount > 0:
                await self.window.hit(item, "babeldesk", limit, who, cost=amount)
        except Exception as exc:  # noqa: BLE001
            log.warning("rate limit %s not counted: storage error %s", limit,
                        type(exc).__name__)

    def _refuse(self, limit: str, item: RateLimitItem, reset_time: float,
                surface: str) -> None:
        if self.metrics is not None:
            self.metrics.rate_limited_total.labels(surface, limit).inc()
        retry_after = max(1, math.ceil(reset_time - time.time()))
        raise RateLimited(f"rate limit exceeded ({limit.replace('_', ' ')}: {item}); "
                          f"retry in {retry_after}s", retry_after=retry_after)

    async def check(self, limit: str, who: str, surface: str) -> None:
        """Count one hit of ``who`` against ``limit``; raise ``RateLimited`` past it."""
        await self._enforce(limit, who, surface, count=True)

    async def _enforce(self, limit: str, who: str, surface: str, *, count: bool) -> None:
        item = self.items.get(limit)
        if item is None:
            return
        try:
            allowed = (self.window.hit if count else self.window.test)
            if await allowed(item, "babeldesk", limit, who):
                return
            stats = await self.window.get_window_stats(item, "babeldesk", limit, who)
        except Exception as exc:  # noqa: BLE001 - storage down: fail open, say so
            log.warning("rate limit %s not enforced: storage error %s", limit,
                        type(exc).__name__)
            return
        self._refuse(limit, item, stats.reset_time, surface)


def client_ip(scope: AsgiScope, forwarded: bool) -> str:
    """The peer's address, or (``forwarded``: behind our own proxy) the right-most
    X-Forwarded-For entry, the one our proxy appended and a client cannot forge."""
    if forwarded:
        for k, v in scope["headers"]:
            if k == b"x-forwarded-for":
                last = v.decode("latin-1").rsplit(",", 1)[-1].strip()
                if last:
                    return last
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RateLimit:
    """Pure ASGI, after ``OperatorAuth``: an operator's request counts against its key;
    an anonymous support message against its client IP."""

    def __init__(self, app: ASGIApp, *, limiter: Limiter, message_path: str,
                 chat_path: str = "/v1/chat/completions") -> None:
        self.app = app
        self.limiter = limiter
        self.message_path = message_path
        self.forwarded = limiter.cfg.forwarded_for
        self.chat_path = chat_path

    async def _metered(self, who: str, scope: AsgiScope, receive: Receive, send: Send) -> None:
        """Serve an OpenAI call and count the tokens its answer says it generated."""
        meter = TokenCount()

        async def _send(message: Any) -> None:
            if message["type"] == "http.response.start":
                meter.start(message)
            elif message["type"] == "http.response.body":
                meter.feed(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            await self.limiter.spend("key_tokens", who, meter.tokens())

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                operator = scope.get("state", {}).get("operator")
                if operator is not None:
                    await self.limiter.check("key_requests", operator.name, "operator")
                    if scope["path"] == self.chat_path:
                        await self.limiter.room("key_tokens", operator.name, "operator")
                        await self._metered(operator.name, scope, receive, send)
                        return
                elif scope["method"] == "POST" and scope["path"] == self.message_path:
                    await self.limiter.check("ip_messages",
                                             client_ip(scope, self.forwarded), "public")
            except RateLimited as exc:
                if scope["path"] == self.message_path:  # the route it would have reached
                    scope.setdefault("route", RouteLabel(self.message_path))
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


_USAGE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_CONTENT = re.compile(rb'"delta"\s*:\s*\{[^{}]*"content"\s*:\s*"(?:[^"\\]|\\.)+"')
_MAX_BODY = 1 << 20  # bytes of a whole answer kept to read its usage


class TokenCount:
    """Generated tokens of an OpenAI chat answer passing by: a whole answer's
    ``usage.completion_tokens``; a stream's usage chunk when it has one, else one token
    per non-empty content delta (babeldesk and vLLM send one per token)."""

    def __init__(self) -> None:
        self.stream = False
        self.ok = False
        self.body = bytearray()
        self.events = 0
        self.usage: int | None = None
        self._tail = b""

    def start(self, message: Any) -> None:
        self.ok = message["status"] == 200
        headers = dict(message.get("headers", []))
        self.stream = b"text/event-stream" in headers.get(b"content-type", b"")

    def feed(self, chunk: bytes) -> None:
        if not self.ok or not chunk:
            return
        if not self.stream:
            if len(self.body) < _MAX_BODY:
                self.body += chunk
            return
        data = self._tail + chunk
        cut = data.rfind(b"\n\n") + 2  # whole events only; the rest waits for more
        whole, self._tail = (data[:cut], data[cut:]) if cut >= 2 else (b"", data)
        self.events += len(_CONTENT.findall(whole))
        found = _USAGE.findall(whole)
        if found:
            self.usage = int(found[-1])

    def tokens(self) -> int:
        if not self.ok:
            return 0
        if not self.stream:
            found = _USAGE.findall(bytes(self.body))
            return int(found[-1]) if found else 0
        return self.usage if self.usage is not None else self.events
