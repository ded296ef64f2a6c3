"""HTTP edge helpers shared by every app (worker, gateway): the one place where the
project's exceptions become JSON errors ``{error: {type, message}}`` with their status.
Never a stack trace, never a 500 for a client mistake; a client that hung up
(``ClientDisconnect``) is counted as 499 and answered nothing. ``until_disconnect``
cancels a non-streamed answer's work when its client hangs up."""

from __future__ import annotations

import asyncio
import enum
import gc
import json
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from babeldesk.errors import BabeldeskError, InvalidRequest, PayloadTooLarge, QueueFull, Unavailable

log = logging.getLogger(__name__)


class Phase(str, enum.Enum):
    """Where an app (worker, gateway) is in its life; only READY serves."""

    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


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
        return http_error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, __: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_GONE)  # counted; uvicorn writes nothing now

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            {"error": {"type": "internal_error", "message": "internal error; see the server log"}},
            status_code=500)


# --- request bodies ------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) past ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json_body(raw: bytes, limit: int) -> Any:
    """Bytes of a request body -> JSON value, or a 4xx naming the problem."""
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is {limit}")
    if not raw.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc


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


# --- clients that go away ---------------------------------------------------------------

T = TypeVar("T")
DISCONNECT_POLL_S = 0.25  # seconds a non-streamed answer runs before its client is watched
CLIENT_GONE = 499  # the status counted for a client that hung up before its answer


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work`` (a non-streamed answer) in this task, cancelling it if the client
    hangs up, so an abandoned request does not keep a batch slot or an upstream call
    busy for nobody; raises ``ClientDisconnect`` then. The watcher (a task reading
    ``receive``, whose body must already be read) is only started if the work is still
    running after ``DISCONNECT_POLL_S``: answers from the cache finish long before, and
    pay a timer, not a task. A streamed response is stopped by the server itself."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                me.cancel()
                return

    def start() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(DISCONNECT_POLL_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:  # our own cancel: the client left; nothing to answer
            me.uncancel()
            raise ClientDisconnect from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


# --- the heap after start-up ------------------------------------------------------------


def freeze_heap() -> None:
    """Call once loading is done: one full collection, then every object alive now (model
    tables, matcher weights, KB: ~150k objects in ``serve``) moves out of the collector's
    reach (``gc.freeze``, as Instagram's servers do). A full collection then scans only
    what came later; in ``serve`` it took 89 ms before, a pause that lands on every
    request in flight and sets the p99 of fast answers."""
    gc.collect()
    gc.freeze()


# --- graceful shutdown ------------------------------------------------------------------


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM/SIGINT first drains: ``on_drain()`` flips the app to refusing
    new work (503, /ready false), then the server waits until ``busy()`` is 0 or
    ``grace_s`` has passed, and only then shuts down. A second signal stops at once."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float,
                 on_drain: Callable[[], None], busy: Callable[[], int]) -> None:
        super().__init__(config)
        self.grace_s = grace_s
        self.on_drain = on_drain
        self.busy = busy
        self._drain_started = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_started:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_started = True
        threading.Thread(target=self._drain, name="drain", daemon=True).start()

    def _drain(self) -> None:
        self.on_drain()
        log.info("draining: refusing new requests, up to %.0fs for in-flight ones", self.grace_s)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and self.busy() > 0:
            time.sleep(0.05)
        self.should_exit = True
