"""HTTP edge helpers shared by every app (worker, gateway): the one place where the
project's exceptions become JSON errors ``{error: {type, message}}`` with their status.
Never a stack trace, never a 500 for a client mistake."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from babeldesk.errors import BabeldeskError, QueueFull, Unavailable

log = logging.getLogger(__name__)


def error_response(exc: BabeldeskError) -> JSONResponse:
    headers = {}
    if isinstance(exc, (QueueFull, Unavailable)):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BabeldeskError)
    async def _project(_: Request, exc: BabeldeskError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s: %s", exc.type, exc.message)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        msg = f"{loc}: {first.get('msg', 'invalid request')}" if loc else "invalid request"
        return JSONResponse({"error": {"type": "invalid_request_error", "message": msg}},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"type": kind, "message": str(exc.detail)}},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"error": {"type": "internal_error", "message": "internal error; see the server log"}},
            status_code=500)
