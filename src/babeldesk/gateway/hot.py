"""The support API's message endpoint as a plain ASGI handler.

``POST /v1/support/messages`` is the request a shop's traffic is made of, and most of its
answers come from the cache or the knowledge base in well under a millisecond of work.
Through FastAPI's middleware stack, dependency solving and response classes the framework
cost more than the answer (py-spy, cached answers: ~40% of the server's CPU). Here the
same contract is served by one coroutine reached before FastAPI's routing
(``HotRoutes``; the edge's middleware wraps it as every route: CORS, metrics, operator
auth, rate limits), wrapped in ``Counted``, which labels it for the metrics and answers
errors with the same JSON bodies and status codes as ``web.install_error_handlers`` (the
OpenAI passthrough of ``gateway/passthrough.py`` uses it too). The handler reads and bounds the body and
cancels the work when a non-streamed client hangs up (``web.until_disconnect``: a
watcher starts only once a request has run for ``DISCONNECT_POLL_S``, so a cached answer
pays a timer, not a task).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from babeldesk.edge.auth import RouteLabel
from babeldesk.errors import BabeldeskError, PayloadTooLarge
from babeldesk.web import CLIENT_GONE, decode_json_body, error_response, until_disconnect

log = logging.getLogger(__name__)
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

SUPPORT_PATH = "/v1/support/messages"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class HotRoutes(FastAPI):
    """FastAPI, except that the (method, path) pairs in ``hot`` are served by their plain
    ASGI handler before FastAPI's middleware and routing; everything else is unchanged.
    Middleware added with ``add_edge`` wraps both (every route passes it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot: dict[tuple[str, str], Handler] = {}
        self._edge: list[tuple[Any, dict[str, Any]]] = []  # outermost last
        self._entry: Handler | None = None

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


def _header(scope: Scope, name: bytes) -> bytes:
    for k, v in scope["headers"]:
        if k == name:
            return v  # type: ignore[no-any-return]
    return b""


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        *_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _dumps(content: Any) -> bytes:  # as Starlette's JSONResponse renders it
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


class Counted:
    """A hot endpoint as FastAPI's exception handlers would serve it: the project's
    exceptions as JSON errors (those raised before the first byte; ``web.error_response``
    bodies and headers); a client that hangs up (``ClientDisconnect``) is answered 499,
    which nobody reads and the metrics count. Its metrics are the edge's, as every
    route's (``telemetry.http.MetricsMiddleware``, labelled ``route``)."""

    def __init__(self, state: Any, route: str, handler: Callable[..., Awaitable[None]]) -> None:
        self.handler = handler
        self.label = RouteLabel(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        scope["route"] = self.label

        async def _send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.handler(scope, receive, _send)
        except BabeldeskError as exc:
            if started:
                raise
            if exc.status >= 500:
                log.warning("%s: %s", exc.type, exc.message)
            await error_response(exc)(scope, receive, _send)
        except ClientDisconnect:
            if not started:  # as web's handler: counted, written nowhere
                await send({"type": "http.response.start", "status": CLIENT_GONE,
                            "headers": []})
                await send({"type": "http.response.body", "body": b""})
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            await _send_json(_send, 500, _dumps({"error": {
                "type": "internal_error", "message": "internal error; see the server log"}}))


async def read_limited_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing (413) past ``limit`` bytes without reading it all."""
    declared = _header(scope, b"content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared.decode()} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def support_endpoint(state: Any, *, parse: Callable[[Any, str], tuple[Any, bool]],
                     events: Callable[[AsyncIterator[Any]], AsyncIterator[str]]) -> Counted:
    """``POST /v1/support/messages``: JSON in, the reply as JSON or as SSE (``stream``).
    ``parse`` gets the decoded body and the Accept-Language header ("" when absent)."""
    limit = state.config.gateway.max_body_bytes

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        pipeline = state.require()
        raw = await read_limited_body(scope, receive, limit)
        languages = _header(scope, b"accept-language").decode("latin-1")
        request, stream = parse(decode_json_body(raw, limit), languages)
        if request.session_id:  # a new conversation has no id yet: its IP's limit counts
            await state.limiter.check("session_messages", request.session_id, "public")
        if not stream:
            reply = await until_disconnect(pipeline.handle(request), receive)
            await _send_json(send, 200, _dumps(reply.to_dict()))
            return
        items = pipeline.stream(request)
        first = await items.__anext__()  # a bad request is a 4xx, not a broken stream

        async def chained() -> AsyncIterator[Any]:
            yield first
            async for item in items:
                yield item

        await StreamingResponse(events(chained()), media_type="text/event-stream",
                                headers={"Cache-Control": "no-cache",
                                         "X-Accel-Buffering": "no"})(scope, receive, send)

    return Counted(state, SUPPORT_PATH, handle)
