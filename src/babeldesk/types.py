"""Plain data types passed between parts, and the ``ChatModel`` protocol that
``support`` calls and both the in-process engine and the fleet client satisfy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy."""

    max_tokens: int | None = None  # None: the engine's max_new_tokens default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    """One streamed piece of a completion. The last one has ``finish_reason`` and ``usage``."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(slots=True)
class ChatRequest:
    messages: Sequence[ChatMessage]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    session_id: str | None = None  # conversation key for session affinity across workers


class ChatModel(Protocol):
    """Chat messages in, streamed text out."""

    @property
    def model_name(self) -> str: ...

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[TextDelta]: ...


async def collect(stream: AsyncIterator[TextDelta]) -> Completion:
    """Drain a stream into one Completion."""
    parts: list[str] = []
    last: TextDelta | None = None
    async for delta in stream:
        parts.append(delta.text)
        last = delta
    if last is None or last.finish_reason is None or last.usage is None:
        raise RuntimeError("stream ended without a final delta")
    return Completion("".join(parts), last.finish_reason, last.usage)
