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
        # labelled children, looked up once each (``labels()`` takes a lock and builds a
        # key every call); routes are templates and statuses few, so these stay small
        self._in_flight = metrics.requests_in_flight.labels(metrics.app)
        self._totals: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self._in_flight.inc()
        try:
            await self.app(scope, receive, _send)
        finally:
            self._in_flight.dec()
            route = _route(scope)
            total = self._totals.get((route, status))
            if total is None:
                m = self.metrics
                total = self._totals[(route, status)] = m.requests_total.labels(
                    m.app, route, str(status))
            duration = self._durations.get(route)
            if duration is None:
                m = self.metrics
                duration = self._durations[route] = m.request_duration_seconds.labels(
                    m.app, route)
            total.inc()
            duration.observe(time.perf_counter() - start)
