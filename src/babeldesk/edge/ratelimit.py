"""Abuse controls: moving-window rate limits with the ``limits`` library, on memory (one
process) or on Redis (every gateway replica counts into the same windows, so N replicas
enforce one limit, not N: the bug LiteLLM carried for years, BerriAI/litellm #2730).

What is limited (``LimitsConfig``; "" turns one off):
- ``ip_messages``: support messages per client IP (the middleware, before the body);
- ``session_messages``: messages per session id (the support handler, once parsed);
- ``key_requests``: operator-surface requests per operator key (the middleware, after
  auth, so the key's name is known).
A request over a limit gets 429 ``rate_limit_error`` with Retry-After (seconds until the
window lets one more in) and counts in ``babeldesk_rate_limited_total{surface,limit}``.
If the limit storage is unreachable the request passes and the error is logged: a Redis
outage must not take the support chat down with it (``/ready`` reports the sessions store).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from babeldesk.config import LimitsConfig
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
        self.storage = storage_from_string(storage_uri(cfg.storage_url), **options)
        self.window = MovingWindowRateLimiter(self.storage)
        self.items = {"ip_messages": _item(cfg.ip_messages),
                      "session_messages": _item(cfg.session_messages),
                      "key_requests": _item(cfg.key_requests)}
        self.metrics = metrics

    def enabled(self, limit: str) -> bool:
        return self.items.get(limit) is not None

    async def check(self, limit: str, who: str, surface: str) -> None:
        """Count one hit of ``who`` against ``limit``; raise ``RateLimited`` past it."""
        item = self.items.get(limit)
        if item is None:
            return
        try:
            if await self.window.hit(item, "babeldesk", limit, who):
                return
            stats = await self.window.get_window_stats(item, "babeldesk", limit, who)
        except Exception as exc:  # noqa: BLE001 - storage down: fail open, say so
            log.warning("rate limit %s not enforced: storage error %s", limit,
                        type(exc).__name__)
            return
        if self.metrics is not None:
            self.metrics.rate_limited_total.labels(surface, limit).inc()
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(f"rate limit exceeded ({limit.replace('_', ' ')}: {item}); "
                          f"retry in {retry_after}s", retry_after=retry_after)


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

    def __init__(self, app: ASGIApp, *, limiter: Limiter, message_path: str) -> None:
        self.app = app
        self.limiter = limiter
        self.message_path = message_path
        self.forwarded = limiter.cfg.forwarded_for

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                operator = scope.get("state", {}).get("operator")
                if operator is not None:
                    await self.limiter.check("key_requests", operator.name, "operator")
                elif scope["method"] == "POST" and scope["path"] == self.message_path:
                    await self.limiter.check("ip_messages",
                                             client_ip(scope, self.forwarded), "public")
            except RateLimited as exc:
                from babeldesk.web import error_response

                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
