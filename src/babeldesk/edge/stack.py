"""The middleware stack around every route: ``EdgeApp`` is FastAPI, except that the
(method, path) pairs in ``hot`` are served by plain ASGI handlers before FastAPI's
routing (the support message endpoint and the OpenAI passthrough, whose answers take less
work than FastAPI's per-request machinery), and that middleware added with ``add_edge``
wraps both, hot or not: one edge (CORS, metrics, operator auth, rate limits) for every
route, so nothing added to it can skip a route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class EdgeApp(FastAPI):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot: dict[tuple[str, str], Handler] = {}
        # the OpenAPI operations of the hot routes, which FastAPI cannot see ({path: {method: op}})
        self.documented: dict[str, dict[str, dict[str, Any]]] = {}
        self._edge: list[tuple[Any, dict[str, Any]]] = []  # outermost last
        self._entry: Handler | None = None

    def serve_hot(self, method: str, path: str, handler: Handler,
                  operation: dict[str, Any]) -> None:
        """Serve (method, path) with a plain ASGI handler, documented by ``operation``."""
        self.hot[(method, path)] = handler
        self.documented.setdefault(path, {})[method.lower()] = operation

    def add_edge(self, middleware: Any, **options: Any) -> None:
        """A pure-ASGI middleware around every route, hot or not (before the first call)."""
        assert self._entry is None, "the edge is built on the first request"
        self._edge.append((middleware, options))

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.hot.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self._entry
        if entry is None:
            entry = self._dispatch
            for middleware, options in self._edge:
                entry = middleware(entry, **options)
            self._entry = entry
        await entry(scope, receive, send)
