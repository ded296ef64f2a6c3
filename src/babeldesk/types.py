"""Plain data types passed between parts, the ``ChatModel`` protocol that ``support``
calls and both the in-process engine and the fleet client satisfy, the engine's reporting
interface, and the bench result that ``bench`` writes and ``cost`` and ``autoscale`` read."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from babeldesk.errors import ConfigError, GenerationFailed

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


async def generated_text(stream: AsyncIterator[TextDelta]) -> str:
    """Drain a stream into its text, stripped; a delta that reports an error (or a stream
    that ends with ``finish_reason == "error"``) raises ``GenerationFailed``."""
    parts: list[str] = []
    async for delta in stream:
        if delta.error or delta.finish_reason == "error":
            raise GenerationFailed(delta.error or "model stream broke off")
        parts.append(delta.text)
    return "".join(parts).strip()


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


# --- the bench result: `babeldesk bench` writes it, `babeldesk cost` and the autoscaler read it


MODEL_SOURCES = ("model", "document")  # support answer sources the model generated


@dataclass(frozen=True)
class BenchResult:
    """What the cost model and the autoscaler read of one bench result JSON. Keys may sit
    under a ``"summary"`` object; others are ignored, so the bench may add more::

        {"achieved_rps": 12.4,          # requests/s completed in the run (required)
         "slo_rps": 9.8,                # highest requests/s that met the SLO (preferred)
         "source_shares": {"knowledge_base": 0.62, "cache": 0.10, "model": 0.20,
                           "document": 0.05, "handoff": 0.03},  # messages by answer source
         "without_model_share": 0.75,   # or this directly (wins over source_shares)
         "model": "qwen2.5-0.5b", "device": "NVIDIA L4"}        # labels (optional)

    The model's share is what the GPU fleet carries: answers it generated (``model`` and
    ``document``); a bench straight against a worker has model share 1."""

    achieved_rps: float  # requests/s completed in the run
    slo_rps: float | None = None  # highest requests/s that still met the SLO
    without_model_share: float | None = None  # 0..1 answered without the model; None: not measured
    source: str = "bench result"
    model: str = ""
    device: str = ""

    @property
    def rps(self) -> float:
        """The rate to plan with: the SLO rate when measured, else the achieved one."""
        return self.slo_rps if self.slo_rps is not None else self.achieved_rps

    @property
    def model_rps(self) -> float:
        """Model-answered requests/s one replica carried at that rate (its capacity)."""
        return self.rps * (1.0 - (self.without_model_share or 0.0))


def _bench_number(key: str, value: Any, *, rate: bool) -> float:
    """A JSON number: a rate finite and > 0, a share in [0, 1]; else ``ConfigError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if rate and value <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    if not rate and not 0 <= value <= 1:
        raise ConfigError(key, f"must be in [0, 1], got {value!r}")
    return float(value)


def parse_bench_result(data: Any, source: str = "bench result") -> BenchResult:
    """A bench result object (see ``BenchResult``) -> ``BenchResult``; fails naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(source, "must be a JSON object")
    body = data.get("summary", data)
    if not isinstance(body, Mapping):
        raise ConfigError(f"{source}: summary", "must be a JSON object")
    if "achieved_rps" not in body:
        raise ConfigError(f"{source}: achieved_rps", "missing")
    achieved = _bench_number(f"{source}: achieved_rps", body["achieved_rps"], rate=True)
    slo = body.get("slo_rps")
    slo_rps = None if slo is None else _bench_number(f"{source}: slo_rps", slo, rate=True)
    share: float | None = None
    key = f"{source}: without_model_share"
    if body.get("without_model_share") is not None:
        share = _bench_number(key, body["without_model_share"], rate=False)
    elif body.get("source_shares") is not None:
        shares = body["source_shares"]
        if not isinstance(shares, Mapping) or "model" not in shares:
            raise ConfigError(f"{source}: source_shares", "must map answer sources to shares, "
                              "including 'model'")
        generated = sum(_bench_number(f"{source}: source_shares.{k}", shares[k], rate=False)
                        for k in MODEL_SOURCES if shares.get(k) is not None)
        key = f"{source}: source_shares.model + document"
        share = 1.0 - min(generated, 1.0)
    if share is not None and share >= 1.0:
        raise ConfigError(key, "no benched request reached the model (model share 0): "
                          "it says nothing about a replica's capacity")
    return BenchResult(achieved, slo_rps, share, source, str(body.get("model") or ""),
                       str(body.get("device") or ""))


def load_bench_result(path: str | Path) -> BenchResult:
    """``parse_bench_result`` of a JSON file; unreadable or invalid JSON fails naming it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"invalid JSON: {exc}") from exc
    return parse_bench_result(data, source=str(p))
