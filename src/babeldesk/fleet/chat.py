"""``FleetChatModel``: the ``ChatModel`` protocol over the fleet, the model ``support`` gets
from ``babeldesk gateway``: a chat request as an OpenAI streamed completion sent through
``Fleet.request``, its SSE events read back as text deltas."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from babeldesk.errors import BabeldeskError, InvalidRequest, QueueFull, Unavailable
from babeldesk.fleet.attempt import UpstreamReply
from babeldesk.fleet.client import Fleet
from babeldesk.sse import Chunk, event_data, parse_chunk
from babeldesk.types import ChatRequest, TextDelta, Usage


class FleetChatModel:
    """The ``ChatModel`` protocol over a fleet of OpenAI-compatible workers."""

    def __init__(self, fleet: Fleet, model: str) -> None:
        self.fleet = fleet
        self._model = model  # the upstreams' served model name (vLLM checks it)

    @property
    def model_name(self) -> str:
        return self._model

    def body(self, request: ChatRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.max_tokens is not None:
            body["max_tokens"] = p.max_tokens
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        return body

    async def stream_chat(
        self, request: ChatRequest, *, session_id: str | None = None,
    ) -> AsyncIterator[TextDelta]:
        """Text deltas, then one final delta with finish_reason and usage. A stream broken
        midway ends with ``finish_reason="error"`` and ``error`` set. Raises before the
        first delta: ``Unavailable`` (no upstream), ``QueueFull``, ``InvalidRequest``."""
        session_id = session_id or request.session_id
        reply = await self.fleet.request(self.body(request), session_id=session_id)
        if reply.stream is None:
            raise _http_error(reply)
        completion = 0
        finish = None
        usage: Usage | None = None
        splitter_done = False
        try:
            async for ev in reply.stream:
                data = event_data(ev)
                if data is None:
                    continue
                chunk: Chunk = parse_chunk(data)
                if chunk.done:
                    splitter_done = True
                    break
                if chunk.error:
                    yield TextDelta("", "error", usage or Usage(0, completion), chunk.error)
                    return
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.text:
                    completion += 1
                    yield TextDelta(chunk.text)
        finally:
            await reply.aclose()
        if not splitter_done:  # the relay always ends with [DONE] or an error event
            yield TextDelta("", "error", usage or Usage(0, completion), "stream ended early")
            return
        yield TextDelta("", finish or "stop", usage or Usage(0, completion))


def _http_error(reply: UpstreamReply) -> BabeldeskError:
    message = f"the model server answered {reply.status}"  # no internal address
    try:
        err = json.loads(reply.body or b"{}").get("error") or {}
        message = str(err.get("message") or message)
    except (ValueError, AttributeError):
        pass
    if reply.status == 429:
        return QueueFull(message)
    if 400 <= reply.status < 500:
        return InvalidRequest(message)
    return Unavailable(message)
