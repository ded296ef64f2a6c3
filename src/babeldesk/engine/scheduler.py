"""Iteration-level (continuous) batching: decide what each engine step runs.

Pure bookkeeping, no model calls: the waiting queue (bounded), the running set, slots,
admission under the batch limit, and the per-step prefill budget (chunked prefill, so a
long prompt never stalls everyone else's decoding).

Prefix reuse (when the backend keeps a slot's KV after its sequence leaves): a joining
sequence takes a free slot that loses nothing (one holding only a prefix of it, the
longest such, e.g. its own conversation's last turn; or an empty one), else the free slot
sharing the longest prefix with it, the least recently freed among equals, as
llama-server's ``get_available_slot`` does (longest common prefix, else LRU). It then
prefills only what that slot does not hold. When another slot, free or running, holds a
prefix longer by >= MIN_COPY_TOKENS (the system prompt, a conversation a second request
continues) and the backend copies KV between slots, the step first copies that prefix
into the chosen slot: the source keeps its own KV untouched.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence as Seq
from typing import Protocol

from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, PrefixCopy, StepInput
from babeldesk.engine.sequence import SeqStatus, Sequence
from babeldesk.errors import QueueFull

# a copy must save at least this many prompt tokens: llamacpp copies the whole slot's KV
# buffer (qwen2.5-0.5b, max_model_len 2048: 24 MiB, +17 ms on a 1-token step on the shared
# 2-core EPYC under load, where that step took 103 ms and a prompt token ~10-50 ms)
MIN_COPY_TOKENS = 4


class KeptKV(Protocol):
    """What the scheduler asks a backend that keeps KV across requests."""

    supports_prefix_copy: bool

    def cached_prefix(self, slot: int, tokens: Seq[int]) -> int: ...

    def kept_tokens(self, slot: int) -> int: ...


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue: int, prefill_budget: int,
                 kept: KeptKV | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.effective_max_batch_size = max_batch_size  # lowered after out-of-memory
        self.max_queue = max_queue
        self.prefill_budget = prefill_budget
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # admission order
        self._free_slots = list(range(max_batch_size - 1, -1, -1))
        self._kept = kept  # the backend's kept KV per slot; None: no prefix reuse
        self._copies: list[PrefixCopy] = []  # decided at admission, until the step commits
        self._clock = 0  # counts slot releases
        self._released_at = [0] * max_batch_size  # slot -> _clock when it was last freed
        self.reused_tokens = 0  # prompt tokens not prefilled thanks to a kept prefix
        self._finish_rate = 1.0  # requests/s, EWMA; for Retry-After
        self._last_finish = time.monotonic()

    # --- queue ----------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        free = self.effective_max_batch_size - len(self.running)
        if len(self.waiting) >= self.max_queue + max(free, 0):
            raise QueueFull(
                f"queue full ({len(self.waiting)} waiting, max_queue={self.max_queue})",
                retry_after=self.retry_after(),
            )
        self.waiting.append(seq)

    def retry_after(self) -> float:
        """Seconds until the queue has likely drained by one batch."""
        return max(1.0, min(60.0, round(len(self.waiting) / max(self._finish_rate, 0.1))))

    @property
    def prefix_caching(self) -> bool:
        return self._kept is not None

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step ---------------------------------------------------------------------

    def schedule(self) -> StepInput:
        """Admit waiting sequences into free slots, then build the next step."""
        now = time.monotonic()
        while self.waiting and self._free_slots and len(self.running) < self.effective_max_batch_size:
            seq = self.waiting.popleft()
            seq.start_prefill()
            seq.slot = self._take_slot(seq)
            seq.status = SeqStatus.RUNNING
            if seq.admitted_at is None:
                seq.admitted_at = now
            self.running.append(seq)

        running = {s.slot for s in self.running}
        self._copies = [c for c in self._copies if c.dst in running]  # not preempted since
        step = StepInput(copies=list(self._copies))
        budget = self.prefill_budget
        for seq in self.running:
            if not seq.prefilling:
                toks = seq.tokens
                step.decode.append(DecodeItem(seq.slot, toks[-1], len(toks) - 1))
            elif budget > 0:
                start = seq.num_computed
                n = min(budget, seq.prefill_target - start)
                chunk = seq.tokens[start:start + n]
                step.prefill.append(
                    PrefillChunk(seq.slot, chunk, start, start + n == seq.prefill_target))
                budget -= n
        return step

    def _take_slot(self, seq: Sequence) -> int:
        """A free slot for ``seq`` (see the module docstring); sets how much of it is
        already computed (at least one token is always computed, for the logits)."""
        kept = self._kept
        if kept is None:
            return self._free_slots.pop()
        tokens = seq.tokens
        hit = {s: kept.cached_prefix(s, tokens) for s in self._free_slots}

        def keep_order(i: int) -> tuple[int, int, int]:
            slot = self._free_slots[i]
            if hit[slot] == kept.kept_tokens(slot):  # holds only a prefix of seq (or nothing)
                return (1, hit[slot], 0)
            return (0, hit[slot], -self._released_at[slot])

        slot = self._free_slots.pop(max(range(len(self._free_slots)), key=keep_order))
        reuse = hit[slot]
        if kept.supports_prefix_copy:
            copied_into = {c.dst for c in self._copies}  # their KV arrives with the step
            sources = [s for s in [q.slot for q in self.running] + self._free_slots
                       if s not in copied_into]
            best = max(sources, key=lambda s: kept.cached_prefix(s, tokens), default=-1)
            n = kept.cached_prefix(best, tokens) if best >= 0 else 0
            n = min(n, seq.prefill_target - 1)
            if n >= reuse + MIN_COPY_TOKENS:
                self._copies.append(PrefixCopy(best, slot, n))
                reuse = n
        seq.num_computed = max(min(reuse, seq.prefill_target - 1), 0)
        self.reused_tokens += seq.num_computed
        return slot

    def _free(self, slot: int) -> None:
        self._clock += 1
        self._released_at[slot] = self._clock
        self._free_slots.append(slot)

    def committed(self, step: StepInput) -> None:
        """The step ran: copies are done, prefill chunks are now in the KV cache."""
        self._copies = []
        by_slot = {s.slot: s for s in self.running}
        for chunk in step.prefill:
            by_slot[chunk.slot].num_computed += len(chunk.tokens)
        for item in step.decode:
            by_slot[item.slot].num_computed += 1

    def preempt_half(self) -> list[int]:
        """Out of memory: keep the older half running, send the newer half back to the
        front of the queue (recomputed later, nothing emitted twice), and lower the batch
        limit to what is kept. Returns the freed slots, whose KV the backend must drop."""
        keep = max(1, len(self.running) // 2)
        evicted = self.running[keep:]
        self.running = self.running[:keep]
        freed = []
        for seq in reversed(evicted):
            self._free(seq.slot)
            freed.append(seq.slot)
            seq.slot = -1
            seq.status = SeqStatus.WAITING
            self.waiting.appendleft(seq)
        self.effective_max_batch_size = keep
        lost = [c for c in self._copies if c.src in freed]  # their source KV is dropped
        for seq in self.running:
            if any(c.dst == seq.slot for c in lost):
                seq.num_computed = 0  # still prefilling: nothing emitted, recompute it all
        self._copies = [c for c in self._copies if c.src not in freed]
        return freed

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or cancelled sequence (running or waiting); free its slot."""
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
            self._free(seq.slot)
        elif seq.status == SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        now = time.monotonic()
        gap = max(now - self._last_finish, 1e-3)
        self._finish_rate = 0.8 * self._finish_rate + 0.2 * (1.0 / gap)
        self._last_finish = now
