"""ASGI middleware that counts requests by route template and status and times them
(``requests_total``, ``request_duration_seconds``, ``requests_in_flight``). Pure ASGI, so
streamed responses are timed to their last byte and never buffered."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from babeldesk.telemetry.metrics import Metrics

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path or "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, skip: tuple[str, ...] = ("/metrics",)) -> None:
        self.app = app
        self.metrics = metrics
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip:
            await self.app(scope, receive, send)
            return
        m = self.metrics
        start = time.perf_counter()
        status = 500

        async def _send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        m.requests_in_flight.labels(m.app).inc()
        try:
            await self.app(scope, receive, _send)
        finally:
            m.requests_in_flight.labels(m.app).dec()
            route = _route(scope)
            m.requests_total.labels(m.app, route, str(status)).inc()
            m.request_duration_seconds.labels(m.app, route).observe(time.perf_counter() - start)
