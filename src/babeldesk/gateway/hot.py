"""The support API's message endpoint as a plain ASGI handler.

``POST /v1/support/messages`` is the request a shop's traffic is made of, and most of its
answers come from the cache or the knowledge base in well under a millisecond of work.
Through FastAPI's middleware stack, dependency solving and response classes the framework
cost more than the answer (py-spy, cached answers: ~40% of the server's CPU). Here the
same contract is served by one coroutine reached before FastAPI's routing
(``edge.stack.EdgeApp.hot``; the edge's middleware wraps it as every route: CORS,
metrics, operator auth, rate limits), wrapped in ``edge.errors.Counted``, which labels it
for the metrics and answers errors with the same JSON bodies and status codes as every
other route. The handler reads and bounds the body and cancels the work when a
non-streamed client hangs up (``edge.disconnect.until_disconnect``: a watcher starts only
once a request has run for ``DISCONNECT_POLL_S``, so a cached answer pays a timer, not a
task).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from babeldesk.edge.bodies import decode_json_body, header, read_limited_body
from babeldesk.edge.disconnect import until_disconnect
from babeldesk.edge.errors import Counted

log = logging.getLogger(__name__)

SUPPORT_PATH = "/v1/support/messages"
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        *_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _dumps(content: Any) -> bytes:  # as Starlette's JSONResponse renders it
    return json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


def support_endpoint(state: Any, *, parse: Callable[[Any, str], tuple[Any, bool]],
                     events: Callable[[AsyncIterator[Any]], AsyncIterator[str]]) -> Counted:
    """``POST /v1/support/messages``: JSON in, the reply as JSON or as SSE (``stream``).
    ``parse`` gets the decoded body and the Accept-Language header ("" when absent)."""
    limit = state.config.gateway.max_body_bytes

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        pipeline = state.require()
        raw = await read_limited_body(scope, receive, limit)
        languages = header(scope, b"accept-language").decode("latin-1")
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
