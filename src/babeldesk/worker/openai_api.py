"""The OpenAI-compatible chat-completions surface of an engine (the subset vLLM serves:
messages, max_tokens, temperature, top_p, seed, stop, stream, usage).

Request parsing is a pure function (``parse_chat_request``) so bad input is tested
without a server; ``openai_router`` mounts it on FastAPI for the worker and for ``serve``.
A client that hangs up aborts its engine sequence and frees the batch slot: a whole
answer through ``edge.disconnect.until_disconnect`` (counted 499), a stream when the server stops it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from babeldesk.errors import InvalidRequest, ModelNotFound
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams, TextDelta
from babeldesk.edge.bodies import decode_json_body, read_body
from babeldesk.edge.disconnect import until_disconnect
from babeldesk.edge.openapi import SSE_SCHEMA, json_body

MAX_STOP = 4
MAX_SEED = 2**63 - 1


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_TextPart] | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v == "developer":  # OpenAI's newer name for the system role
            return "system"
        if v not in ("system", "user", "assistant"):
            raise ValueError(f"unsupported role {v!r}; expected system, user or assistant")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[_Message]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # numpy's generators take a seed in [0, 2**128); the API promises int64's non-negative
    # half, and anything else is the client's mistake (a 400, never a 500 that a fleet
    # would count against the worker)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1, le=1)
    user: str | None = None


def _describe(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first.get("loc", ())) or "body"
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{loc}: {msg}", loc


def parse_chat_request(data: Any, served_names: set[str]) -> tuple[ChatCompletionBody, ChatRequest]:
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        body = ChatCompletionBody.model_validate(data)
    except ValidationError as exc:
        message, loc = _describe(exc)
        raise InvalidRequest(message, param=loc) from exc
    if body.model and body.model not in served_names:
        raise ModelNotFound(
            f"model {body.model!r} is not served here; available: {', '.join(sorted(served_names))}",
            param="model")
    if not body.messages:
        raise InvalidRequest("messages must contain at least one message", param="messages")
    messages = [ChatMessage(m.role, m.text()) for m in body.messages]  # type: ignore[arg-type]
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise InvalidRequest("messages need at least one non-empty user message", param="messages")
    stop: tuple[str, ...] = ()
    if isinstance(body.stop, str):
        stop = (body.stop,)
    elif body.stop:
        stop = tuple(body.stop)
    if len(stop) > MAX_STOP:
        raise InvalidRequest(f"at most {MAX_STOP} stop sequences", param="stop")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens is not None and max_tokens <= 0:
        raise InvalidRequest("max_tokens must be >= 1", param="max_tokens")
    params = SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
        seed=body.seed, stop=stop)
    return body, ChatRequest(messages, params, request_id=f"chatcmpl-{uuid.uuid4().hex[:24]}")


# --- response shapes -----------------------------------------------------------------


def completion_json(req_id: str, model: str, text: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": req_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    }


def chunk_json(req_id: str, model: str, created: int, delta: dict[str, Any],
               finish: str | None = None, usage: dict[str, int] | None = None,
               choices: bool = True) -> str:
    obj: dict[str, Any] = {
        "id": req_id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        if choices else [],
    }
    if usage is not None:
        obj["usage"] = usage
    return "data: " + json.dumps(obj, ensure_ascii=False) + "\n\n"


def _finish_reason(delta: TextDelta) -> str:
    # OpenAI knows stop | length; an aborted or failed sequence reports "stop" plus an error
    return "length" if delta.finish_reason == "length" else "stop"


def _usage(delta: TextDelta) -> dict[str, int]:
    assert delta.usage is not None
    u = delta.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


async def sse_stream(stream: Any, req_id: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """TextDeltas -> OpenAI ``chat.completion.chunk`` server-sent events, then [DONE]."""
    created = int(time.time())
    try:
        yield chunk_json(req_id, model, created, {"role": "assistant", "content": ""})
        async for delta in stream:
            if delta.error:
                err = {"error": {"type": "generation_failed", "message": delta.error}}
                yield "data: " + json.dumps(err) + "\n\n"
                break
            if delta.text:
                yield chunk_json(req_id, model, created, {"content": delta.text})
            if delta.finish_reason is not None:
                yield chunk_json(req_id, model, created, {}, finish=_finish_reason(delta))
                if include_usage:
                    yield chunk_json(req_id, model, created, {}, usage=_usage(delta), choices=False)
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()


class GuardedEngine:
    """An engine as the router sees it: ``check()`` runs before any new work (it raises
    ``Unavailable`` while the app is loading or draining)."""

    def __init__(self, engine: Any, check: Callable[[], object]) -> None:
        self._engine, self._check = engine, check
        self.model_name = engine.model_name

    def encode(self, messages: Any) -> list[int]:
        self._check()
        return self._engine.encode(messages)

    def submit(self, prompt_ids: list[int], request: ChatRequest) -> Any:
        self._check()
        return self._engine.submit(prompt_ids, request)


CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
OPENAI_PATHS = frozenset({CHAT_PATH, MODELS_PATH})  # what ``openai_router`` serves


# the body is read (bounded) and validated by hand; FastAPI documents it from here
_CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": json_body(ChatCompletionBody),
    "responses": {
        "200": {"description": "the completion, or its chunks as server-sent events with "
                "stream: true", "content": {"application/json": {"schema": {"type": "object"}},
                                           "text/event-stream": {"schema": SSE_SCHEMA}}},
        "500": {"description": "the model failed mid-generation", "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
}


def openai_router(engine: Any, *, max_body_bytes: int, served_names: set[str]) -> APIRouter:
    """``POST /v1/chat/completions`` and ``GET /v1/models`` over an ``Engine``."""
    router = APIRouter()
    model_name = engine.model_name

    @router.get(MODELS_PATH, tags=["operator"])
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": model_name, "object": "model", "created": 0, "owned_by": "babeldesk"}]}

    @router.post(CHAT_PATH, tags=["operator"], openapi_extra=_CHAT_OPENAPI)
    async def chat_completions(request: Request) -> Any:
        data = decode_json_body(await read_body(request, max_body_bytes), max_body_bytes)
        body, chat = parse_chat_request(data, served_names)
        prompt_ids = engine.encode(chat.messages)
        stream = engine.submit(prompt_ids, chat)  # 400 / 429 / 503 raised here, before any byte
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                sse_stream(stream, chat.request_id, model_name, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts: list[str] = []

        async def drain() -> TextDelta | None:
            last = None
            try:
                async for delta in stream:
                    parts.append(delta.text)
                    last = delta
            finally:
                stream.cancel()  # also when the client hung up: the slot is freed
            return last

        final = await until_disconnect(drain(), request.receive)  # its body is read
        assert final is not None and final.usage is not None
        if final.error:
            return JSONResponse({"error": {"type": "generation_failed", "message": final.error}},
                                status_code=500)
        return completion_json(chat.request_id, model_name, "".join(parts), _finish_reason(final),
                               final.usage.prompt_tokens, final.usage.completion_tokens)

    return router


def mount_openai(app: FastAPI, engine: Any, check: Callable[[], object], *,
                 max_body_bytes: int, configured_name: str) -> None:
    """Once the model is loaded (``worker`` and ``serve`` alike): the OpenAI routes over
    ``engine``, refusing new work while ``check()`` raises (loading, draining); the model
    answers to its served name and to the configured reference."""
    app.include_router(openai_router(
        GuardedEngine(engine, check), max_body_bytes=max_body_bytes,
        served_names={engine.model_name, configured_name}))
