"""The engine: one backend, one scheduler, one thread running the step loop.

Async callers submit a request and read a stream of ``TextDelta``; the engine thread
schedules, runs the backend, samples, detokenizes and hands deltas back to the caller's
event loop. Model compute releases the GIL (llama.cpp, torch), so the event loop stays
responsive while a step runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq

import numpy as np

from babeldesk.config import EngineConfig
from babeldesk.engine.backends.base import Backend, StepInput
from babeldesk.engine.sampling import sample
from babeldesk.engine.scheduler import Scheduler
from babeldesk.engine.sequence import Sequence
from babeldesk.errors import ContextTooLong, InvalidRequest, OutOfMemory, Unavailable
from babeldesk.types import (
    ChatMessage, ChatRequest, EngineReporter, SilentReporter, TextDelta, Usage,
)

log = logging.getLogger(__name__)


def _emitter(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[TextDelta]):
    """Thread-safe delivery into the caller's loop; a closed loop means the caller is gone."""

    def emit(delta: TextDelta) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, delta)
        except RuntimeError:  # event loop closed
            pass

    return emit


class RequestStream:
    """The deltas of one submitted sequence, in order; the last has ``finish_reason``."""

    def __init__(self, engine: Engine, seq: Sequence, queue: asyncio.Queue[TextDelta]) -> None:
        self._engine, self.seq, self._queue = engine, seq, queue
        self._done = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.seq.prompt_ids)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> TextDelta:
        if self._done:
            raise StopAsyncIteration
        delta = await self._queue.get()
        if delta.finish_reason is not None:
            self._done = True
        return delta

    def cancel(self) -> None:
        """Idempotent; a no-op once the sequence has finished."""
        if self.seq.finish_reason is None:
            self._engine.cancel(self.seq)


class Engine:
    """Satisfies ``ChatModel``: ``stream_chat(request)`` yields ``TextDelta``s."""

    def __init__(self, backend: Backend, config: EngineConfig,
                 reporter: EngineReporter | None = None) -> None:
        self.backend = backend
        self.config = config
        self.reporter: EngineReporter = reporter or SilentReporter()
        kept = backend if backend.supports_prefix_cache and config.prefix_cache else None
        self.scheduler = Scheduler(config.max_batch_size, config.max_queue, config.prefill_budget,
                                   kept=kept)
        self._cv = threading.Condition()
        self._stopping = False
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self._cap_bytes = config.memory_cap_mb * 1024 * 1024
        self._reused = 0  # scheduler.reused_tokens already reported
        self.reporter.batch_limit(config.max_batch_size)

    @property
    def model_name(self) -> str:
        return self.config.name

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="babeldesk-engine", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        self._accepting = False

    def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.backend.close()

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    # --- requests ------------------------------------------------------------------------

    def encode(self, messages: Seq[ChatMessage]) -> list[int]:
        return self.backend.encode_chat(messages)

    def check_lengths(self, prompt_len: int, max_tokens: int | None) -> int:
        """Completion-token budget for a prompt, or a 400 naming the problem."""
        limit = self.config.max_model_len
        if prompt_len >= limit:
            raise ContextTooLong(
                f"prompt is {prompt_len} tokens; max_model_len is {limit}", param="messages")
        if max_tokens is None:
            return min(self.config.max_new_tokens, limit - prompt_len)
        if max_tokens <= 0:
            raise InvalidRequest("max_tokens must be >= 1", param="max_tokens")
        if prompt_len + max_tokens > limit:
            raise ContextTooLong(
                f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds "
                f"max_model_len ({limit})", param="max_tokens")
        return max_tokens

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[TextDelta]:
        """``ChatModel``: template, tokenize, queue, stream."""
        stream = self.submit(self.encode(request.messages), request)
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.cancel()

    def submit(self, prompt_ids: list[int], request: ChatRequest) -> RequestStream:
        """Queue a tokenized prompt now (raising QueueFull / ContextTooLong / Unavailable
        before any response starts); iterate the result for its deltas. Call ``cancel()``
        when the client goes away: the slot is freed at the next step."""
        if not self._accepting:
            raise Unavailable("engine is draining")
        max_tokens = self.check_lengths(len(prompt_ids), request.params.max_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TextDelta] = asyncio.Queue()
        seq = Sequence(
            request_id=request.request_id or f"req-{uuid.uuid4().hex[:12]}",
            prompt_ids=list(prompt_ids),
            params=request.params,
            max_tokens=max_tokens,
            decoder=self.backend.decoder(),
            emit=_emitter(loop, queue),
            rng=np.random.default_rng(request.params.seed),
        )
        with self._cv:
            self.scheduler.add(seq)  # raises QueueFull
            self._observe_queue()
            self._cv.notify()
        return RequestStream(self, seq, queue)

    def cancel(self, seq: Sequence) -> None:
        with self._cv:
            seq.cancelled = True
            self._cv.notify()

    # --- the loop (engine thread) -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self.scheduler.has_work:
                    self._cv.wait()
                if self._stopping:
                    for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
                        self._finish(seq, "abort")
                    return
                self._reap_cancelled()
                step = self.scheduler.schedule()
                self._observe_queue()
            if not step.slots:
                continue
            try:
                self._step(step)
            except Exception as exc:  # a backend failure must not kill the engine
                log.exception("engine step failed")
                with self._cv:
                    for seq in list(self.scheduler.running):
                        self._finish(seq, "error", error=f"generation failed: {exc}")

    def _reap_cancelled(self) -> None:
        for seq in [s for s in self.scheduler.running if s.cancelled] + [
            s for s in self.scheduler.waiting if s.cancelled
        ]:
            self._finish(seq, "abort")

    def _observe_queue(self) -> None:
        self.reporter.queue(len(self.scheduler.waiting), len(self.scheduler.running))

    def _fits(self, step: StepInput) -> bool:
        """CPU memory cap: KV of every running sequence after this step + weights."""
        if not self._cap_bytes:
            return True
        tokens = sum(s.num_computed for s in self.scheduler.running) + step.num_tokens
        need = tokens * self.backend.kv_bytes_per_token() + self.backend.weights_bytes()
        return need <= self._cap_bytes

    def _step(self, step: StepInput) -> None:
        while True:
            try:
                if not self._fits(step):
                    raise OutOfMemory("step exceeds engine.memory_cap_mb")
                logits = self.backend.step(step)
                break
            except OutOfMemory as exc:
                with self._cv:
                    self.reporter.out_of_memory()
                    if len(self.scheduler.running) <= 1:
                        for seq in list(self.scheduler.running):
                            self._finish(seq, "error", error=f"out of memory: {exc.message}")
                        return
                    for slot in self.scheduler.preempt_half():
                        self.backend.release(slot)
                    self.reporter.batch_limit(self.scheduler.effective_max_batch_size)
                    log.warning("out of memory: batch limit lowered to %d",
                                self.scheduler.effective_max_batch_size)
                    step = self.scheduler.schedule()
                if not step.slots:
                    return
        now = time.monotonic()
        with self._cv:
            self.scheduler.committed(step)
            self.reporter.step(len(step.slots), sum(len(c.tokens) for c in step.prefill),
                               self.scheduler.reused_tokens - self._reused)
            self._reused = self.scheduler.reused_tokens
            by_slot = {s.slot: s for s in self.scheduler.running}
            for slot, row in logits.items():
                owner = by_slot.get(slot)
                if owner is None or owner.cancelled:
                    continue
                self._advance(owner, sample(row, owner.params, owner.rng), now)

    def _advance(self, seq: Sequence, token: int, now: float) -> None:
        seq.output_ids.append(token)
        if seq.first_token_at is None:
            seq.first_token_at = now
            self.reporter.token(ttft_s=now - seq.arrival, queue_wait_s=None
                                if seq.admitted_at is None else seq.admitted_at - seq.arrival)
        else:
            self.reporter.token(gap_s=None if seq.last_token_at is None
                                else now - seq.last_token_at)
        seq.last_token_at = now
        if token in self.backend.eos_token_ids:
            self._finish(seq, "stop")
            return
        text = seq.stop.push(seq.decoder.push(token))
        if seq.stop.stopped:
            if text:
                seq.emit(TextDelta(text))
            self._finish(seq, "stop", flush=False)
            return
        if len(seq.output_ids) >= seq.max_tokens:
            if text:
                seq.emit(TextDelta(text))
            self._finish(seq, "length")
            return
        if text:
            seq.emit(TextDelta(text))

    def _finish(self, seq: Sequence, reason: str, *, error: str | None = None,
                flush: bool = True) -> None:
        """Caller holds the lock. Frees the slot at once and sends the final delta."""
        if seq.finish_reason is not None:
            return
        slot, was_running = seq.slot, seq.slot >= 0
        self.scheduler.finish(seq)
        if was_running and (reason == "error" or not self.scheduler.prefix_caching):
            self.backend.release(slot)
        # else the slot keeps the KV of everything its sequence computed (prompt and output,
        # also when cancelled): the next turn of this conversation, or a prompt sharing a
        # prefix with it, prefills only the rest; the backend trims it when it is reused
        tail = ""
        if flush and reason in ("stop", "length"):
            tail = seq.stop.push(seq.decoder.flush()) + seq.stop.flush()
        seq.finish_reason = reason  # type: ignore[assignment]
        self.reporter.finished(reason)
        self._observe_queue()
        seq.emit(TextDelta(
            tail, finish_reason=seq.finish_reason,
            usage=Usage(len(seq.prompt_ids), len(seq.output_ids)), error=error))
