"""The load generator of ``babeldesk bench``: HTTP only (httpx), asyncio.

Targets (a str enum + one abstract ``send``):
  support  babeldesk's ``POST /v1/support/messages`` (SSE ``event: delta`` / ``event: done``
           with ``stream``; plain JSON without): records the answer source and handoffs.
  openai   any OpenAI-compatible ``POST /v1/chat/completions``, streamed: babeldesk's
           worker or serve, vLLM, llama.cpp server, TGI, SGLang.

Modes: open loop (Poisson arrivals at a target rate; a request is sent at its arrival
time whatever is still in flight, so a slow server cannot slow the arrivals down) and
closed loop (N clients, each sending its next request when the previous one is answered).
``slo_search`` finds the highest open-loop rate that still meets a latency SLO.

Times are seconds on the monotonic clock (``time.perf_counter``), from the moment the
request is sent: end-to-end latency to the last byte, TTFT to the first text, and the
gaps between consecutive pieces of streamed text (inter-token latency).
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from babeldesk.bench.workload import WorkItem
from babeldesk.errors import ConfigError
from babeldesk.sse import SseLines, parse_chunk


class TargetKind(str, enum.Enum):
    SUPPORT = "support"
    OPENAI = "openai"


class LoadMode(str, enum.Enum):
    OPEN = "open"  # Poisson arrivals at ``rate``
    CLOSED = "closed"  # ``concurrency`` clients back to back


@dataclass(frozen=True)
class TargetConfig:
    kind: TargetKind
    base_url: str  # http://host:port, without /v1
    stream: bool = True
    model: str = ""  # openai: the model name to send ("" = ask GET /v1/models)
    max_tokens: int = 64  # openai: completion tokens per request unless the item says
    api_key: str = ""  # sent as Authorization: Bearer
    timeout_s: float = 120.0  # per request, connect to last byte

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("--url", f"must be an http(s) URL, got {self.base_url!r}")
        if self.max_tokens < 1:
            raise ConfigError("--max-tokens", "must be >= 1")
        if self.timeout_s <= 0:
            raise ConfigError("--timeout", "must be > 0")


@dataclass(frozen=True)
class LoadConfig:
    mode: LoadMode = LoadMode.CLOSED
    requests: int = 100  # requests to send (open loop: arrivals drawn)
    rate: float = 1.0  # open loop: mean arrivals/s
    concurrency: int = 4  # closed loop: clients
    duration_s: float = 0.0  # stop sending after this many seconds; 0 = no limit
    max_in_flight: int = 512  # open loop: arrivals beyond this are counted, not sent
    seed: int = 0

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ConfigError("--requests", "must be >= 1")
        if self.mode == LoadMode.OPEN and self.rate <= 0:
            raise ConfigError("--rate", "must be > 0 in open loop")
        if self.concurrency < 1:
            raise ConfigError("--concurrency", "must be >= 1")
        if self.duration_s < 0:
            raise ConfigError("--duration", "must be >= 0")
        if self.max_in_flight < 1:
            raise ConfigError("--max-in-flight", "must be >= 1")


@dataclass(slots=True)
class RequestResult:
    """One request as the client saw it."""

    sent_at: float  # seconds since the run started
    status: str  # "200", "429", ..., or "timeout", "connect_error", "stream_error", "overload"
    latency_s: float | None = None  # to the last byte; None when it failed
    ttft_s: float | None = None  # to the first text
    gaps_s: list[float] = field(default_factory=list)  # between consecutive text pieces
    tokens: int = 0  # completion tokens (usage, else text pieces)
    source: str | None = None  # support: knowledge_base | cache | model | handoff
    handoff: bool = False
    language: str | None = None  # support: the language it answered in
    intent: str | None = None  # support: the intent it matched
    translated: bool = False  # support: a KB answer the model translated into the language
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "200" and self.error is None and self.latency_s is not None


@dataclass
class RunResult:
    mode: LoadMode
    results: list[RequestResult]
    wall_s: float  # first send to last answer
    offered_rps: float | None = None  # open loop: the target rate
    concurrency: int | None = None  # closed loop
    items: list[WorkItem] = field(default_factory=list)  # what was sent, by result index


# --- targets ---------------------------------------------------------------------------------


class Target(abc.ABC):
    def __init__(self, config: TargetConfig) -> None:
        self.config = config
        self.headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}

    async def prepare(self, client: httpx.AsyncClient) -> None:
        """Once before the run (e.g. learn the model name)."""

    @abc.abstractmethod
    async def send(self, client: httpx.AsyncClient, item: WorkItem, t0: float) -> RequestResult:
        """Send one item; ``t0`` is the run's start (perf_counter). Never raises for HTTP
        or network failures: they are results."""

    async def _guarded(self, client: httpx.AsyncClient, item: WorkItem,
                       t0: float) -> RequestResult:
        start = time.perf_counter()
        try:
            return await asyncio.wait_for(self.send(client, item, t0), self.config.timeout_s)
        except (TimeoutError, httpx.TimeoutException):
            return RequestResult(start - t0, "timeout", error="timed out")
        except httpx.ConnectError as exc:
            return RequestResult(start - t0, "connect_error", error=str(exc) or "connect error")
        except httpx.HTTPError as exc:
            return RequestResult(start - t0, "http_error", error=f"{type(exc).__name__}: {exc}")
        except (ValueError, TypeError, AttributeError) as exc:  # a body that is not the API's
            return RequestResult(start - t0, "bad_response", error=f"{type(exc).__name__}: {exc}")


def _error_status(resp: httpx.Response, body: bytes, result: RequestResult) -> RequestResult:
    result.status = str(resp.status_code)
    try:
        result.error = str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        result.error = body[:200].decode("utf-8", "replace") or f"HTTP {resp.status_code}"
    return result


class SupportTarget(Target):
    async def send(self, client: httpx.AsyncClient, item: WorkItem, t0: float) -> RequestResult:
        body: dict[str, Any] = {"message": item.message, "stream": self.config.stream}
        url = self.config.base_url.rstrip("/") + "/v1/support/messages"
        start = time.perf_counter()
        result = RequestResult(start - t0, "200")
        if not self.config.stream:
            resp = await client.post(url, json=body, headers=self.headers)
            end = time.perf_counter()
            if resp.status_code != 200:
                return _error_status(resp, resp.content, result)
            self._reply(result, resp.json())
            result.latency_s = result.ttft_s = end - start
            return result
        async with client.stream("POST", url, json=body, headers=self.headers) as resp:
            if resp.status_code != 200:
                return _error_status(resp, await resp.aread(), result)
            sse, last, done = SseLines(), None, False
            async for line in resp.aiter_lines():
                ev = sse.feed(line)
                if ev is None:
                    continue
                now = time.perf_counter()
                if ev.event == "delta":
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    elif last is not None:
                        result.gaps_s.append(now - last)
                    last = now
                    result.tokens += 1
                elif ev.event == "done":
                    self._reply(result, json.loads(ev.data))
                    done = True
                elif ev.event == "error":
                    result.status, result.error = "stream_error", ev.data[:200]
            end = time.perf_counter()
        if not done and result.error is None:
            result.status, result.error = "stream_error", "stream ended without a done event"
        if result.error is None:
            result.latency_s = end - start
            if result.ttft_s is None:
                result.ttft_s = result.latency_s
        return result

    @staticmethod
    def _reply(result: RequestResult, data: dict[str, Any]) -> None:
        result.source = data.get("source")
        result.handoff = bool(data.get("handoff"))
        result.language = data.get("language")
        result.intent = data.get("intent")
        result.translated = bool(data.get("translated"))


class OpenAITarget(Target):
    async def prepare(self, client: httpx.AsyncClient) -> None:
        if self.config.model:
            self.model = self.config.model
            return
        resp = await client.get(self.config.base_url.rstrip("/") + "/v1/models",
                                headers=self.headers)
        try:
            self.model = str(resp.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ConfigError("--model", f"GET /v1/models answered {resp.status_code} without "
                              "a model; name one with --model") from None

    async def send(self, client: httpx.AsyncClient, item: WorkItem, t0: float) -> RequestResult:
        body: dict[str, Any] = {
            "model": self.model, "messages": [{"role": "user", "content": item.message}],
            "max_tokens": item.max_tokens or self.config.max_tokens, "temperature": 0.0,
            "stream": self.config.stream}
        if self.config.stream:
            body["stream_options"] = {"include_usage": True}
        url = self.config.base_url.rstrip("/") + "/v1/chat/completions"
        start = time.perf_counter()
        result = RequestResult(start - t0, "200", language=item.language or None)
        if not self.config.stream:
            resp = await client.post(url, json=body, headers=self.headers)
            end = time.perf_counter()
            if resp.status_code != 200:
                return _error_status(resp, resp.content, result)
            usage = resp.json().get("usage") or {}
            result.tokens = int(usage.get("completion_tokens") or 0)
            result.latency_s = result.ttft_s = end - start
            result.source = "model"
            return result
        async with client.stream("POST", url, json=body, headers=self.headers) as resp:
            if resp.status_code != 200:
                return _error_status(resp, await resp.aread(), result)
            sse, last, done, pieces, usage_tokens = SseLines(), None, False, 0, None
            async for line in resp.aiter_lines():
                ev = sse.feed(line)
                if ev is None:
                    continue
                chunk = parse_chunk(ev.data)
                text, error, is_done = chunk.text, chunk.error, chunk.done
                tokens = chunk.usage.completion_tokens if chunk.usage else None
                now = time.perf_counter()
                if error is not None:
                    result.status, result.error = "stream_error", error
                if tokens is not None:
                    usage_tokens = tokens
                if text:
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    elif last is not None:
                        result.gaps_s.append(now - last)
                    last = now
                    pieces += 1
                done = done or is_done
            end = time.perf_counter()
        if not done and result.error is None:
            result.status, result.error = "stream_error", "stream ended without [DONE]"
        if result.error is None:
            result.latency_s = end - start
            result.tokens = usage_tokens if usage_tokens is not None else pieces
            result.source = "model"
        return result


def make_target(config: TargetConfig) -> Target:
    return SupportTarget(config) if config.kind == TargetKind.SUPPORT else OpenAITarget(config)


# --- running load ------------------------------------------------------------------------------


def poisson_offsets(n: int, rate: float, seed: int) -> np.ndarray:
    """Arrival times (seconds from start) of ``n`` Poisson arrivals at ``rate``/s: [n]."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / rate, size=n))


def _client(target: TargetConfig, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(timeout=httpx.Timeout(target.timeout_s), limits=limits)


async def run_load(target: Target, items: Sequence[WorkItem], load: LoadConfig,
                   on_result: Callable[[RequestResult], None] | None = None) -> RunResult:
    """Send ``items`` (``load.requests`` of them, cycled) as ``load`` says; every request
    ends as a result (answered, failed, or timed out after ``timeout_s``)."""
    if not items:
        raise ConfigError("workload", "no messages to send")
    todo = [items[i % len(items)] for i in range(load.requests)]
    conns = load.max_in_flight if load.mode == LoadMode.OPEN else load.concurrency
    async with _client(target.config, conns) as client:
        await target.prepare(client)
        t0 = time.perf_counter()
        deadline = t0 + load.duration_s if load.duration_s else None
        results: list[RequestResult | None] = [None] * len(todo)

        def record(i: int, r: RequestResult) -> None:
            results[i] = r
            if on_result is not None:
                on_result(r)

        if load.mode == LoadMode.OPEN:
            offsets = poisson_offsets(len(todo), load.rate, load.seed)
            in_flight: set[asyncio.Task[None]] = set()

            async def one(i: int) -> None:
                record(i, await target._guarded(client, todo[i], t0))

            for i, offset in enumerate(offsets):
                at = t0 + float(offset)
                if deadline is not None and at > deadline:
                    break
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(in_flight) >= load.max_in_flight:
                    record(i, RequestResult(time.perf_counter() - t0, "overload",
                                            error="client max_in_flight reached"))
                    continue
                task = asyncio.create_task(one(i))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.gather(*in_flight)
        else:
            next_index = iter(range(len(todo)))

            async def client_loop() -> None:
                for i in next_index:
                    if deadline is not None and time.perf_counter() > deadline:
                        return
                    record(i, await target._guarded(client, todo[i], t0))

            await asyncio.gather(*(client_loop() for _ in range(load.concurrency)))
        wall = time.perf_counter() - t0
    sent = [(r, todo[i]) for i, r in enumerate(results) if r is not None]
    return RunResult(load.mode, [r for r, _ in sent], wall,
                     offered_rps=load.rate if load.mode == LoadMode.OPEN else None,
                     concurrency=load.concurrency if load.mode == LoadMode.CLOSED else None,
                     items=[it for _, it in sent])
