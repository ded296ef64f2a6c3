"""OpenAI passthrough of ``babeldesk gateway``: ``POST /v1/chat/completions`` and
``GET /v1/models`` relayed to the fleet, as raw ASGI endpoints.

This is the gateway's hot path when it fronts workers for OpenAI clients, so it skips what
costs without doing anything here: FastAPI's middleware stack, routing and dependency
solving (``install`` puts the endpoints in ``EdgeApp.hot``, served before all that but
inside the edge's middleware (operator auth), with the request metrics and the JSON
errors done here as the middleware and handlers would), re-encoding the JSON body (the client's bytes go upstream as they
came, after one parse that checks them and reads ``stream``), and a ``Response`` object
for a whole answer (two ASGI messages are sent directly). A client that hangs up stops
the upstream request, so the worker aborts the generation and frees its slot: while a
whole answer is awaited, through ``edge.disconnect.until_disconnect`` (the upstream call is
cancelled and its connection closed); a streamed answer goes out through
``StreamingResponse``, whose disconnect listener stops the upstream stream. The same
endpoints are also plain routes (other methods get 405 there; an app without ``hot``
serves them through its middleware).

A 429's ``Retry-After`` is passed on. No internal address leaves the gateway:
``x-babeldesk-upstream`` names the worker that answered only with
``gateway.upstream_header`` on (tests and debugging).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Match, Route

from babeldesk.errors import InvalidRequest
from babeldesk.fleet.client import Fleet, UpstreamReply
from babeldesk.gateway.app import GatewayState
from babeldesk.edge.bodies import decode_json_body, read_body
from babeldesk.edge.disconnect import until_disconnect
from babeldesk.edge.errors import Counted
from babeldesk.edge.openapi import SSE_SCHEMA
from babeldesk.edge.stack import EdgeApp

log = logging.getLogger(__name__)
Scope = dict[str, Any]
CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
# the fleet's workers validate the body (their /openapi.json has its schema); the gateway
# checks that it is a JSON object and passes its bytes on
CHAT_OPERATION: dict[str, Any] = {
    "summary": "OpenAI chat completions, relayed to a worker (operator: chat scope)",
    "operationId": "create_chat_completion", "tags": ["operator"],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "description": "an OpenAI chat-completions request"}}}},
    "responses": {"200": {"description": "the completion, or its chunks as server-sent "
                          "events with stream: true", "content": {
                              "application/json": {"schema": {"type": "object"}},
                              "text/event-stream": {"schema": SSE_SCHEMA}}},
                  "500": {"description": "the model failed mid-generation", "content": {
                      "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
}
MODELS_OPERATION: dict[str, Any] = {
    "summary": "The served model (operator: chat scope)", "operationId": "list_models",
    "tags": ["operator"],
    "responses": {"200": {"description": "OpenAI's model list", "content": {
        "application/json": {"schema": {"type": "object"}}}}},
}


class _Endpoint:
    """A raw ASGI endpoint (Starlette mounts a callable object as is, a function it wraps)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send)


class _Route(Route):
    """Puts itself in ``scope["route"]`` as FastAPI's routes do (the metrics middleware
    labels requests by its path template; FastAPI's router leaves that to the route)."""

    def matches(self, scope: MutableMapping[str, Any]) -> tuple[Match, MutableMapping[str, Any]]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


class Passthrough:
    def __init__(self, state: GatewayState, fleet: Fleet, *, session_header: str,
                 max_body_bytes: int) -> None:
        self.state = state
        self.fleet = fleet
        self.session_header = session_header.lower()
        self.max_body_bytes = max_body_bytes
        self.name_upstream = state.config.gateway.upstream_header

    def routes(self) -> list[Route]:
        return [_Route(CHAT_PATH, _Endpoint(self.chat), methods=["POST"]),
                _Route(MODELS_PATH, _Endpoint(self.models), methods=["GET"])]

    def install(self, app: FastAPI) -> None:
        """Mount the routes, and serve them ahead of FastAPI where the app has ``hot``."""
        app.router.routes.extend(self.routes())
        if isinstance(app, EdgeApp):
            app.serve_hot("POST", CHAT_PATH, Counted(self.state, CHAT_PATH, self.chat),
                          CHAT_OPERATION)
            app.serve_hot("GET", MODELS_PATH, Counted(self.state, MODELS_PATH, self.models),
                          MODELS_OPERATION)

    async def chat(self, scope: Scope, receive: Any, send: Any) -> None:
        self.state.require()
        request = Request(scope, receive)
        limit = self.max_body_bytes
        raw = await read_body(request, limit)
        body = decode_json_body(raw, limit)
        if not isinstance(body, dict):
            raise InvalidRequest("request body must be a JSON object")
        session_id = request.headers.get(self.session_header)
        if session_id is not None and not session_id.isprintable():
            raise InvalidRequest(f"{self.session_header}: control characters",
                                 param=self.session_header)
        stream = bool(body.get("stream"))
        work = self.fleet.request(raw=raw, stream=stream, session_id=session_id)
        # a whole answer: a client that hangs up cancels the upstream call (ClientDisconnect,
        # counted 499), whose connection is then closed, so the worker aborts the sequence;
        # a streamed one is stopped by StreamingResponse's disconnect listener in ``relay``
        reply = await (work if stream else until_disconnect(work, receive))
        await relay(reply, scope, receive, send, name_upstream=self.name_upstream)

    async def models(self, scope: Scope, receive: Any, send: Any) -> None:
        self.state.require()
        reply = await self.fleet.request(None, path="/v1/models", method="GET")
        await relay(reply, scope, receive, send, name_upstream=self.name_upstream)


async def relay(reply: UpstreamReply, scope: Scope, receive: Any, send: Any, *,
                name_upstream: bool = False) -> None:
    """Send an upstream's answer to the client: whole, or its SSE events as they come.
    ``name_upstream`` (``gateway.upstream_header``, tests only): say which worker."""
    headers: list[tuple[bytes, bytes]] = []
    if name_upstream:
        headers.append((b"x-babeldesk-upstream", reply.upstream.encode("latin-1")))
    for k, v in (reply.headers or {}).items():
        if k.lower() == "retry-after":
            headers.append((b"retry-after", v.encode("latin-1")))
    if reply.stream is not None:
        stream = reply.stream

        async def events() -> Any:
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                await reply.aclose()

        response = StreamingResponse(
            events(), status_code=reply.status, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                     **{k.decode(): v.decode("latin-1") for k, v in headers}})
        try:
            await response(scope, receive, send)
        finally:  # also when the client left before the stream started
            await reply.aclose()
        return
    body = reply.body or b""
    headers.append((b"content-length", str(len(body)).encode()))
    if reply.content_type:
        headers.append((b"content-type", reply.content_type.encode("latin-1")))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
