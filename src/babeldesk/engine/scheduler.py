"""Iteration-level (continuous) batching: decide what each engine step runs.

Pure bookkeeping, no model calls: the waiting queue (bounded), the running set, slots,
admission under the batch limit, and the per-step prefill budget (chunked prefill, so a
long prompt never stalls everyone else's decoding).
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Sequence as Seq

from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, StepInput
from babeldesk.engine.sequence import SeqStatus, Sequence
from babeldesk.errors import QueueFull


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue: int, prefill_budget: int,
                 cached_prefix: Callable[[int, Seq[int]], int] | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.effective_max_batch_size = max_batch_size  # lowered after out-of-memory
        self.max_queue = max_queue
        self.prefill_budget = prefill_budget
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # admission order
        self._free_slots = list(range(max_batch_size - 1, -1, -1))
        self._cached_prefix = cached_prefix  # (free slot, tokens) -> tokens its KV holds
        self._recent: collections.deque[list[int]] = collections.deque(maxlen=8)  # prompts
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
        return self._cached_prefix is not None

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
                self._recent.append(seq.prompt_ids)
            self.running.append(seq)

        step = StepInput()
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
        """The free slot whose kept KV covers the longest prefix of the sequence (its
        prefill starts after that prefix; at least one token is always computed)."""
        if self._cached_prefix is None:
            return self._free_slots.pop()
        tokens = seq.tokens
        hits = [self._cached_prefix(slot, tokens) for slot in self._free_slots]
        best = max(range(len(hits)), key=lambda i: (hits[i], i))  # ties: the LIFO choice
        reuse = min(hits[best], seq.prefill_target - 1)
        seq.num_computed = max(reuse, 0)
        self.reused_tokens += seq.num_computed
        return self._free_slots.pop(best)

    def shared_prefix(self, seq: Sequence) -> int:
        """Length of the longest prompt prefix ``seq`` shares with another recent prompt:
        what is worth keeping in its slot's KV when it leaves."""
        best = 0
        for other in self._recent:
            if other is seq.prompt_ids:
                continue
            n = 0
            for a, b in zip(other, seq.prompt_ids):
                if a != b:
                    break
                n += 1
            best = max(best, n)
        return best

    def committed(self, step: StepInput) -> None:
        """The step ran: prefill chunks are now in the KV cache."""
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
            self._free_slots.append(seq.slot)
            freed.append(seq.slot)
            seq.slot = -1
            seq.status = SeqStatus.WAITING
            self.waiting.appendleft(seq)
        self.effective_max_batch_size = keep
        return freed

    def finish(self, seq: Sequence) -> None:
        """Remove a finished or cancelled sequence (running or waiting); free its slot."""
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
            self._free_slots.append(seq.slot)
        elif seq.status == SeqStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SeqStatus.FINISHED
        now = time.monotonic()
        gap = max(now - self._last_finish, 1e-3)
        self._finish_rate = 0.8 * self._finish_rate + 0.2 * (1.0 / gap)
        self._last_finish = now
