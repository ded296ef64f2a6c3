"""The agent API (operator surface) and the live event streams.

  GET  /agent                                        the console (plain HTML + JS)
  GET  /v1/agent/queue                               conversations waiting for an agent
  GET  /v1/agent/conversations/{id}?language=en      transcript, customer turns translated
  POST /v1/agent/conversations/{id}/claim   {language}   waiting -> with_agent (409 if taken)
  POST /v1/agent/conversations/{id}/reply   {message}    translated to the customer's language
  POST /v1/agent/conversations/{id}/close                with_agent -> closed
  POST /v1/agent/conversations/{id}/return               with_agent -> bot (the assistant)
  GET  /v1/agent/events                              SSE: queue changes
  GET  /v1/agent/conversations/{id}/events           SSE: everything in that conversation
  GET  /v1/support/sessions/{id}/events              SSE for the customer's page: agent
                                                     replies in the customer's language
  POST /v1/support/sessions/{id}/rating     {value}      thumbs up / down (public surface)

Errors: no or unknown key 401; a key that is not an agent's 403; a conversation another
agent owns 403; not claimed, already claimed, closed or back with the assistant 409; a
reply over ``gateway.max_message_chars`` 413. A refused reply is not stored.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from babeldesk.edge.auth import Scope
from babeldesk.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from babeldesk.gateway.app import SESSION_ID, GatewayState, customer_turn
from babeldesk.store import Turn
from babeldesk.store.events import EventBus
from babeldesk.support.agents import AGENTS_CHANNEL, AgentDesk, session_channel
from babeldesk.support.language import normalize_language_code
from babeldesk.support.pipeline import SupportPipeline, validate_message
from babeldesk.edge.bodies import decode_json_body, read_body
from babeldesk.edge.lifecycle import Phase
from babeldesk.edge.openapi import content

HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing a quiet stream
STOP_CHECK_S = 1.0  # how often an open stream looks whether the gateway is draining
VIEW_TRANSLATIONS = 20  # customer turns translated on view (the newest; cached)
_LANG = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")


def _json_object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body by hand (``_body``)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": properties, "required": required}}}}}


_SSE_DOC = content("text/event-stream")
_CLAIM_DOC = _json_object({"language": {"type": "string", "pattern": _LANG.pattern}}, [])
_REPLY_DOC = _json_object({"message": {"type": "string", "minLength": 1}}, ["message"])
_RATING_DOC = _json_object({"value": {"enum": ["up", "down"]}}, ["value"])


def agent_of(state: GatewayState, request: Request) -> str:
    """The agent a request comes from: the operator key ``edge.auth`` matched (a
    ``gateway.agent_keys`` entry, or a keys-file key with the ``agent`` scope); its name
    is the agent. With the operator surface open (a loopback bind with no keys at all)
    there is no identity, so no agent: 401."""
    operator = request.scope.get("state", {}).get("operator")  # set by edge.auth
    if operator is None:
        raise Unauthorized("an agent key is required (Authorization: Bearer ...)")
    if not operator.allows(Scope.AGENT):
        raise Forbidden("this key has no agent scope")
    return str(operator.name)


def _language(value: Any, param: str = "language") -> str:
    if not isinstance(value, str) or not _LANG.match(value):
        raise InvalidRequest(f"{param}: a language code such as en or es", param=param)
    return normalize_language_code(value)


def _sid(session_id: str) -> str:
    if not SESSION_ID.match(session_id):
        raise NotFound(f"no session {session_id!r}")
    return session_id


async def _body(request: Request, limit: int) -> dict[str, Any]:
    data = decode_json_body(await read_body(request, limit), limit)
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def event_stream(bus: EventBus, channel: str, view: Any = None,
                 stop: Callable[[], bool] = lambda: False) -> StreamingResponse:
    """SSE of one channel: ``ready`` once subscribed, then each event (``view`` maps it for
    this audience, None skips it), a comment every ``HEARTBEAT_S``. Ends within a second
    of ``stop()`` turning true (the gateway draining: the client reconnects elsewhere
    instead of holding the drain for its whole grace period)."""

    async def body() -> AsyncIterator[bytes]:
        async with bus.listen(channel) as events:
            yield _sse("ready", {"channel": channel})
            it = events.__aiter__()
            quiet = 0.0  # seconds since the last byte sent
            while not stop():
                try:
                    event = await asyncio.wait_for(it.__anext__(), STOP_CHECK_S)
                except TimeoutError:
                    quiet += STOP_CHECK_S
                    if quiet >= HEARTBEAT_S:
                        quiet = 0.0
                        yield b": keep-alive\n\n"
                    continue
                except StopAsyncIteration:
                    return
                shown = view(event) if view is not None else event
                if shown is not None:
                    quiet = 0.0
                    yield _sse(str(shown.get("type", "event")), shown)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def customer_view(event: dict[str, Any]) -> dict[str, Any] | None:
    """What the customer's page is sent: agent replies in their language, state changes;
    not their own messages, not system notes (agent names stay on the operator side)."""
    if event.get("type") == "state":
        return {"type": "state", "state": event.get("state")}
    turn = event.get("turn")
    if event.get("type") == "message" and isinstance(turn, dict) and turn.get("role") == "agent":
        return {"type": "message", "turn": customer_turn(Turn.from_dict(turn))}
    return None


async def agent_view(desk: AgentDesk, session_id: str, language: str | None) -> dict[str, Any]:
    t = await desk.sessions.transcript(session_id)
    lang = language or t.agent_language
    turns = [asdict(x) for x in t.turns]
    if lang:  # customer turns stored before the claim: translated now (cached)
        todo = [i for i, x in enumerate(t.turns) if x.role == "user" and x.language
                and x.language != lang and x.translation_language != lang]
        for i in todo[-VIEW_TRANSLATIONS:]:
            x = t.turns[i]
            out = await desk.translator.translate(x.text, x.language, lang)
            turns[i].update(translation=out, translation_language=lang if out else None)
    return {"session_id": t.session_id, "state": t.state, "agent": t.agent,
            "agent_language": t.agent_language, "language": (t.language or "").partition(">")[0]
            or None, "handoff": {"reason": t.handoff_reason} if t.handoff_reason else None,
            "created_at": t.created_at, "turns": turns}


def mount_agent_routes(app: FastAPI, state: GatewayState) -> None:
    limit = state.config.gateway.max_body_bytes
    console = resources.files("babeldesk.gateway").joinpath("static", "agent.html").read_text(
        "utf-8")

    @app.get("/agent", response_class=HTMLResponse)
    async def agent_console() -> HTMLResponse:
        """The console page; everything it shows comes from the agent API with the key the
        agent types in (kept in the tab's sessionStorage)."""
        return HTMLResponse(console, headers={"Cache-Control": "no-store"})

    def ready() -> SupportPipeline:
        return state.require()

    def draining() -> bool:
        return state.phase == Phase.DRAINING

    @app.get("/v1/agent/queue")
    async def queue(request: Request) -> dict[str, Any]:
        agent_of(state, request)
        items = await ready().desk.queue()
        state.metrics.agent_queue_depth.set(len(items))
        return {"conversations": [i.to_dict() for i in items]}

    @app.get("/v1/agent/conversations/{session_id}")
    async def conversation(session_id: str, request: Request) -> dict[str, Any]:
        agent_of(state, request)
        lang = request.query_params.get("language")
        return await agent_view(ready().desk, _sid(session_id),
                                _language(lang) if lang else None)

    @app.post("/v1/agent/conversations/{session_id}/claim", openapi_extra=_CLAIM_DOC)
    async def claim(session_id: str, request: Request) -> dict[str, Any]:
        agent = agent_of(state, request)
        body = await _body(request, limit)
        lang = _language(body.get("language", "en"))
        desk = ready().desk
        t = await desk.claim(agent, lang, _sid(session_id))
        if t.state_since is not None:
            waited = [x.time for x in t.turns if x.role == "assistant" and x.source == "handoff"]
            if waited:
                state.metrics.agent_wait_seconds.observe(max(0.0, t.state_since - waited[-1]))
        return await agent_view(desk, session_id, lang)

    @app.post("/v1/agent/conversations/{session_id}/reply", openapi_extra=_REPLY_DOC)
    async def reply(session_id: str, request: Request) -> dict[str, Any]:
        agent = agent_of(state, request)
        pipeline = ready()
        body = await _body(request, limit)
        text = validate_message(body.get("message"), pipeline.max_message_chars)
        turn = await pipeline.desk.reply(agent, _sid(session_id), text)
        return {"turn": asdict(turn)}

    @app.post("/v1/agent/conversations/{session_id}/close")
    async def close(session_id: str, request: Request) -> dict[str, Any]:
        agent = agent_of(state, request)
        await ready().desk.close(agent, _sid(session_id))
        return {"session_id": session_id, "state": "closed"}

    @app.post("/v1/agent/conversations/{session_id}/return")
    async def give_back(session_id: str, request: Request) -> dict[str, Any]:
        agent = agent_of(state, request)
        await ready().desk.release(agent, _sid(session_id))
        return {"session_id": session_id, "state": "bot"}

    @app.get("/v1/agent/events",
             response_class=StreamingResponse, responses=_SSE_DOC)
    async def agent_events(request: Request) -> StreamingResponse:
        agent_of(state, request)
        return event_stream(ready().desk.bus, AGENTS_CHANNEL, stop=draining)

    @app.get("/v1/agent/conversations/{session_id}/events",
             response_class=StreamingResponse, responses=_SSE_DOC)
    async def conversation_events(session_id: str, request: Request) -> StreamingResponse:
        agent_of(state, request)
        desk = ready().desk
        await desk.sessions.transcript(_sid(session_id), last=0)  # 404 for an unknown one
        return event_stream(desk.bus, session_channel(session_id), stop=draining)

    @app.post("/v1/support/sessions/{session_id}/rating", openapi_extra=_RATING_DOC)
    async def rate(session_id: str, request: Request) -> dict[str, Any]:
        body = await _body(request, limit)
        return await ready().desk.rate(_sid(session_id), body.get("value"))  # type: ignore[arg-type]

    @app.get("/v1/support/sessions/{session_id}/events",
             response_class=StreamingResponse, responses=_SSE_DOC)
    async def customer_events(session_id: str) -> StreamingResponse:
        desk = ready().desk
        await desk.sessions.transcript(_sid(session_id), last=0)  # 404 for an unknown one
        return event_stream(desk.bus, session_channel(session_id), customer_view,
                            stop=draining)
