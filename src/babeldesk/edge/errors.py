"""The one place where the project's exceptions become JSON errors
``{error: {type, message}}`` with their status, for FastAPI routes
(``install_error_handlers``) and for plain ASGI handlers (``Counted``) alike. Never a
stack trace or an exception's text, never a 500 for a client mistake; a client that hung
up (``ClientDisconnect``) is counted as 499 and answered nothing."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from babeldesk.edge.auth import RouteLabel
from babeldesk.errors import BabeldeskError, QueueFull, Unavailable

log = logging.getLogger(__name__)
CLIENT_GONE = 499  # the status counted for a client that hung up before its answer
_INTERNAL = {"error": {"type": "internal_error", "message": "internal error; see the server log"}}


def error_response(exc: BabeldeskError) -> JSONResponse:
    headers = {}
    if isinstance(exc, (QueueFull, Unavailable)):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (no route 404, wrong method 405) in the project's shape."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}},
                        status_code=exc.status_code, headers=getattr(exc, "headers", None))


def validation_message(errors: list[Any]) -> str:
    """The first of pydantic's/FastAPI's validation errors as ``loc: msg`` (no input echo)."""
    first = errors[0] if errors else {}
    loc = ".".join(str(x) for x in first.get("loc", ()))
    return f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BabeldeskError)
    async def _project(_: Request, exc: BabeldeskError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s: %s", exc.type, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": {"type": "invalid_request_error",
                                       "message": validation_message(list(exc.errors()))}},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_GONE)  # counted; uvicorn writes nothing now

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(_INTERNAL, status_code=500)


def unavailable_until_mounted(app: FastAPI, paths: frozenset[str],
                              require: Callable[[], object]) -> None:
    """``paths`` are routes mounted once loading is done (the OpenAI API over the engine).
    A call to one before that gets the 503 with Retry-After that ``require`` raises while
    loading, which a balancer retries on another worker, instead of a 404, which a fleet
    hands back to its client as is (a restarted worker that got traffic while it loaded
    failed 71 customer turns in a chaos test). Once mounted, such a path never 404s."""

    @app.exception_handler(404)
    async def _not_yet(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.url.path in paths:
            try:
                require()
            except Unavailable as unavailable:
                return error_response(unavailable)
        return http_error_response(exc)


class Counted:
    """A plain ASGI endpoint as FastAPI's exception handlers would serve it: the project's
    exceptions as JSON errors (those raised before the first byte; ``error_response``
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
            if not started:  # as install_error_handlers: counted, written nowhere
                await send({"type": "http.response.start", "status": CLIENT_GONE,
                            "headers": []})
                await send({"type": "http.response.body", "body": b""})
        except Exception:
            if started:
                raise
            log.exception("unhandled error")
            await JSONResponse(_INTERNAL, status_code=500)(scope, receive, _send)
