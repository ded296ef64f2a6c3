"""Iteration-level (continuous) batching: decide what each engine step runs.

Pure bookkeeping, no model calls: the waiting queue (bounded), the running set, slots,
admission under the batch limit, and the per-step prefill budget (chunked prefill, so a
long prompt never stalls everyone else's decoding).
"""

from __future__ import annotations

import collections
import time

from babeldesk.engine.backends.base import DecodeItem, PrefillChunk, StepInput
from babeldesk.engine.sequence import SeqStatus, Sequence
from babeldesk.errors import QueueFull


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue: int, prefill_budget: int) -> None:
        self.max_batch_size = max_batch_size
        self.effective_max_batch_size = max_batch_size  # lowered after out-of-memory
        self.max_queue = max_queue
        self.prefill_budget = prefill_budget
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []  # admission order
        self._free_slots = list(range(max_batch_size - 1, -1, -1))
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
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step ---------------------------------------------------------------------

    def schedule(self) -> StepInput:
        """Admit waiting sequences into free slots, then build the next step."""
        now = time.monotonic()
        while self.waiting and self._free_slots and len(self.running) < self.effective_max_batch_size:
            seq = self.waiting.popleft()
            seq.slot = self._free_slots.pop()
            seq.status = SeqStatus.RUNNING
            if seq.admitted_at is None:
                seq.admitted_at = now
            seq.start_prefill()
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
