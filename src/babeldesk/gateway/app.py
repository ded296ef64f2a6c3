"""The gateway's FastAPI app: the support API, the OpenAI-compatible API (in-process engine
in ``serve``, the fleet in ``gateway``), the chat page, health, readiness and metrics.

Everything heavy (model, matcher, stores) is built by ``gateway.server`` in the background;
until it is, ``/ready`` is 503 and the API answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from babeldesk.config import Config
from babeldesk.edge.auth import KeyRing, OperatorAuth, Rule, Scope, Surface, is_loopback
from babeldesk.edge.errors import install_error_handlers
from babeldesk.edge.lifecycle import AppState, Phase
from babeldesk.edge.openapi import SSE_SCHEMA, content, json_body, publish_openapi
from babeldesk.edge.ratelimit import Limiter, RateLimit
from babeldesk.edge.stack import EdgeApp
from babeldesk.errors import BabeldeskError, InvalidRequest, NotFound
from babeldesk.gateway.hot import SUPPORT_PATH, support_endpoint
from babeldesk.store import Turn
from babeldesk.support.language import accept_language as language_of_header
from babeldesk.support.pipeline import SupportPipeline, SupportReply, SupportRequest
from babeldesk.telemetry.http import MetricsMiddleware
from babeldesk.telemetry.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class GatewayState(AppState[SupportPipeline]):
    """What the app serves (the support pipeline once built), its limits and checks."""

    name = "gateway"

    def __init__(self, config: Config, metrics: Metrics) -> None:
        super().__init__(config, metrics)
        self.limiter = Limiter(config.limits, metrics)  # per IP / session / operator key
        self.ready_check: Callable[[], bool] = lambda: True  # e.g. the fleet has a worker
        self.admin: Callable[[], dict[str, Any]] | None = None  # GET /v1/admin/upstreams

    @property
    def pipeline(self) -> SupportPipeline | None:
        return self.served

    @pipeline.setter
    def pipeline(self, pipeline: SupportPipeline | None) -> None:
        self.served = pipeline


class SupportBody(BaseModel):
    # ``message`` is checked by the pipeline (type, length, binary junk) for a clearer
    # error than pydantic's; the published schema says what it must be
    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["message"]})
    message: Any = Field(None, json_schema_extra={"type": "string", "minLength": 1})
    session_id: str | None = Field(None)
    language: str | None = None
    # the page's language (navigator.language, e.g. "es-MX"): a hint for the detector; an
    # unknown or malformed value is ignored, a non-string one is a 400
    locale: str | None = None
    stream: bool = False


def parse_support_body(data: Any, accept_language: str = "") -> tuple[SupportRequest, bool]:
    """The request body -> (request, stream). ``accept_language``: the request's
    Accept-Language header, the locale hint when the body has no ``locale``."""
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        body = SupportBody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "body"
        raise InvalidRequest(f"{loc}: {first.get('msg', 'invalid value')}", param=loc) from exc
    if body.message is None:
        raise InvalidRequest("message is required", param="message")
    if body.session_id is not None and not SESSION_ID.match(body.session_id):
        raise InvalidRequest("session_id: 1-128 characters of A-Z a-z 0-9 _ . : -",
                             param="session_id")
    locale = body.locale or language_of_header(accept_language)
    return SupportRequest(body.message, body.session_id, body.language, locale), body.stream


_REPLY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["session_id", "reply", "language", "source", "state"],
    "properties": {
        "session_id": {"type": "string"}, "reply": {"type": "string"},
        "language": {"type": "string"},
        "source": {"enum": ["knowledge_base", "cache", "document", "model", "handoff", "agent"]},
        "intent": {"type": ["string", "null"]}, "confidence": {"type": "number"},
        "handoff": {"type": ["object", "null"]}, "latency_ms": {"type": "number"},
        "translated": {"type": "boolean"}, "sources": {"type": "array"},
        "state": {"type": "string"}}}
SUPPORT_OPERATION: dict[str, Any] = {
    "summary": "A customer's message; the reply as JSON, or as server-sent events "
               "(delta, then done) with stream: true",
    "operationId": "send_support_message", "tags": ["public"],
    "parameters": [{"name": "Accept-Language", "in": "header", "required": False,
                    "schema": {"type": "string"}}],
    "requestBody": json_body(SupportBody),
    "responses": {"200": {"description": "the reply", "content": {
        "application/json": {"schema": _REPLY_SCHEMA},
        "text/event-stream": {"schema": SSE_SCHEMA}}}},
}


def customer_turn(t: Turn) -> dict[str, Any]:
    """A turn as the customer's transcript shows it: an agent's reply in the customer's
    language (``text``), the agent's original beside it, marked translated; no agent name."""
    out: dict[str, Any] = {"time": t.time, "role": t.role, "text": t.text,
                           "language": t.language, "source": t.source, "intent": t.intent,
                           "confidence": t.confidence}
    if t.role == "agent":
        out["source"] = "agent"
        if t.translation:
            out.update(text=t.translation, language=t.translation_language, translated=True,
                       original=t.text, original_language=t.language)
        else:
            out["translated"] = False
    return out


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def support_events(stream: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Pipeline events -> SSE: ``delta`` events with text, then ``done`` with the reply."""
    try:
        async for item in stream:
            if isinstance(item, SupportReply):
                yield _sse("done", item.to_dict())
            elif item:
                yield _sse("delta", {"text": item})
    except BabeldeskError as exc:
        yield _sse("error", exc.to_dict()["error"])  # type: ignore[arg-type]


# FastAPI's own OpenTelemetry hooks look for a configured provider on every request;
# babeldesk's metrics are Prometheus (telemetry/), so they are off where FastAPI has them.
_NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters else {})


# What is public: the chat page, the widget, sending a message, a customer's own session
# by its id (the id is the customer's capability: random from the gateway, or chosen by
# the shop's page). Everything else is the operator surface; a route without a rule
# needs the admin scope.
_GET = frozenset({"GET", "HEAD"})
GATEWAY_SURFACE = Surface([
    Rule("/", None, _GET), Rule("/widget.js", None, _GET), Rule("/static/", None, _GET),
    Rule("/health", None, _GET), Rule("/ready", None, _GET), Rule("/openapi.json", None, _GET),
    Rule(SUPPORT_PATH, None, frozenset({"POST"})),
    Rule("/v1/support/sessions/", None),
    Rule("/v1/chat/completions", Scope.CHAT), Rule("/v1/models", Scope.CHAT),
    Rule("/v1/admin/", Scope.ADMIN), Rule("/metrics", Scope.METRICS, _GET),
    Rule("/v1/transcripts", Scope.TRANSCRIPTS), Rule("/v1/transcripts/", Scope.TRANSCRIPTS),
    # the agent console is a page with no data in it (the agent types a key into it); its
    # calls to /v1/agent/ carry that key
    Rule("/agent", None, _GET), Rule("/v1/agent/", Scope.AGENT),
])
READY_TIMEOUT_S = 2.0  # seconds the session store has to answer /ready's ping


async def _store_answers(state: GatewayState) -> bool:
    sessions = getattr(state.pipeline, "sessions", None)
    if sessions is None:
        return True
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await sessions.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready; logged, not shown
        log.warning("ready: session store ping failed: %s", type(exc).__name__)
        return False
    return True


def create_app(state: GatewayState) -> FastAPI:
    cfg = state.config.gateway
    app = EdgeApp(title="babeldesk", docs_url=None, redoc_url=None, openapi_url=None,
                    **_NO_OTEL)
    install_error_handlers(app)
    app.state.gateway = state
    static = resources.files("babeldesk.gateway").joinpath("static")
    page = static.joinpath("index.html").read_text("utf-8")
    widget = static.joinpath("widget.js").read_text("utf-8")

    keys = KeyRing.from_config(cfg.api_key, cfg.keys_file, agent_keys=cfg.agent_keys)
    # the edge, innermost first: rate limits (they need the operator's key name), auth,
    # metrics, CORS
    app.add_edge(RateLimit, limiter=state.limiter, message_path=SUPPORT_PATH)
    app.add_edge(OperatorAuth, keys=keys, surface=GATEWAY_SURFACE,
                 open_without_keys=is_loopback(cfg.host))
    # every request counted, hot or not, refused at the edge or answered
    app.add_edge(MetricsMiddleware, metrics=state.metrics)
    if cfg.cors_origins:  # outermost: a preflight is answered before auth looks at it
        app.add_edge(CORSMiddleware, allow_origins=list(cfg.cors_origins),
                     allow_methods=["GET", "POST", "DELETE"], allow_headers=["content-type"],
                     max_age=600)
    if not len(keys):
        log.warning("no operator keys: the operator surface (OpenAI API, admin, metrics) is %s",
                    "open (loopback bind)" if is_loopback(cfg.host) else "refused (403)")
    else:
        log.info("operator keys: %s", ", ".join(keys.names()))  # names only, never secrets

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/widget.js", response_class=Response, responses=content("text/javascript"))
    async def widget_js() -> Response:
        # cached by the shop's visitors for an hour; allowed origins: gateway.cors_origins
        return Response(widget, media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "phase": state.phase.value}

    @app.get("/ready")
    async def ready() -> Response:
        """200 only when loaded, an upstream is in rotation and the session store answers;
        the body says which is missing, never an exception's text (that goes to the log)."""
        status = state.phase.value
        if state.phase == Phase.READY:
            if not state.ready_check():
                status = "no healthy upstream"
            elif not await _store_answers(state):
                status = "session store unreachable"
            else:
                status = "ready"
        elif state.phase == Phase.FAILED:
            status = "failed: see the server log"
        ok = status == "ready"
        return JSONResponse({"status": status}, status_code=200 if ok else 503,
                            headers=None if ok else {"Retry-After": "5"})

    @app.get("/metrics", response_class=Response, responses=content("text/plain"))
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # the message endpoint skips FastAPI's per-request machinery (see gateway/hot.py)
    app.serve_hot("POST", SUPPORT_PATH, support_endpoint(
        state, parse=parse_support_body, events=support_events), SUPPORT_OPERATION)
    publish_openapi(app, extra=lambda: app.documented)

    @app.get("/v1/support/sessions/{session_id}")
    async def get_session(session_id: str) -> dict[str, Any]:
        pipeline = state.require()
        if not SESSION_ID.match(session_id):
            raise NotFound(f"no session {session_id!r}")
        t = await pipeline.sessions.transcript(session_id)
        locked = (t.language or "").partition(">")[0] or None
        return {
            "session_id": t.session_id, "created_at": t.created_at, "language": locked,
            "handoff": {"reason": t.handoff_reason} if t.handoff_reason else None,
            "state": t.state,
            "turns": [customer_turn(x) for x in t.turns],
        }

    @app.delete("/v1/support/sessions/{session_id}")
    async def delete_session(session_id: str) -> Response:
        pipeline = state.require()
        if not SESSION_ID.match(session_id):
            raise NotFound(f"no session {session_id!r}")
        await pipeline.sessions.delete(session_id)
        return Response(status_code=204)

    from babeldesk.gateway.agents import mount_agent_routes  # they import this module
    from babeldesk.gateway.transcripts import mount_transcript_routes

    mount_agent_routes(app, state)
    mount_transcript_routes(app, state)

    @app.get("/v1/admin/upstreams")
    async def admin_upstreams() -> dict[str, Any]:
        if state.admin is None:
            raise NotFound("this gateway has no upstream pool (embedded engine)")
        return state.admin()

    return app
