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


class EngineReporter(Protocol):
    """What the engine reports while it runs; ``telemetry.metrics.EngineMetrics`` turns it
    into Prometheus metrics. The engine calls it from its thread, under its lock: keep the
    methods cheap and non-blocking."""

    def queue(self, waiting: int, running: int) -> None:
        """Sequences waiting for a slot and in the running batch, now."""

    def batch_limit(self, size: int) -> None:
        """The batch limit in force (lowered after out-of-memory)."""

    def out_of_memory(self) -> None:
        """A step ran out of memory and the batch was split."""

    def step(self, batch: int, prompt_tokens: int, reused_tokens: int) -> None:
        """One step ran: its sequences, prompt tokens prefilled, prompt tokens whose KV was
        kept from an earlier request (not prefilled)."""

    def token(self, *, ttft_s: float | None = None, queue_wait_s: float | None = None,
              gap_s: float | None = None) -> None:
        """A token was generated: the sequence's first (with its TTFT and queue wait), or
        a later one (with the gap since the one before)."""

    def finished(self, reason: str) -> None:
        """A sequence finished: stop | length | abort | error."""


class SilentReporter:
    """An ``EngineReporter`` that records nothing (an engine nobody watches)."""

    def queue(self, waiting: int, running: int) -> None: ...
    def batch_limit(self, size: int) -> None: ...
    def out_of_memory(self) -> None: ...
    def step(self, batch: int, prompt_tokens: int, reused_tokens: int) -> None: ...
    def token(self, *, ttft_s: float | None = None, queue_wait_s: float | None = None,
              gap_s: float | None = None) -> None: ...
    def finished(self, reason: str) -> None: ...
