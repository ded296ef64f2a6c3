from __future__ import annotations

import numpy as np
import pytest

from babeldesk.engine.detokenize import ByteTokenDecoder
from babeldesk.engine.scheduler import Scheduler
from babeldesk.engine.sequence import Sequence, SeqStatus
from babeldesk.errors import QueueFull
from babeldesk.types import SamplingParams


def make_seq(n_prompt: int, rid: str = "r") -> Sequence:
    return Sequence(rid, list(range(1, n_prompt + 1)), SamplingParams(), 16,
                    ByteTokenDecoder(lambda t: b"x"), lambda d: None, np.random.default_rng(0))


def test_admits_up_to_batch_limit_and_queues_the_rest() -> None:
    s = Scheduler(max_batch_size=2, max_queue=1, prefill_budget=100)
    seqs = [make_seq(4, f"r{i}") for i in range(3)]
    for q in seqs:
        s.add(q)
    with pytest.raises(QueueFull) as exc:
        s.add(make_seq(4))
    assert exc.value.retry_after >= 1
    step = s.schedule()
    assert [c.slot for c in step.prefill] == [seqs[0].slot, seqs[1].slot]
    assert seqs[2].status == SeqStatus.WAITING


def test_prefill_budget_chunks_long_prompts_and_decode_never_waits() -> None:
    s = Scheduler(max_batch_size=4, max_queue=4, prefill_budget=8)
    short, long_ = make_seq(3, "short"), make_seq(20, "long")
    s.add(short)
    s.add(long_)
    step = s.schedule()
    assert [(c.slot, len(c.tokens), c.last) for c in step.prefill] == [
        (short.slot, 3, True), (long_.slot, 5, False)]
    s.committed(step)
    short.output_ids.append(42)  # sampled from the last prefill chunk
    step = s.schedule()
    assert [(d.slot, d.token, d.pos) for d in step.decode] == [(short.slot, 42, 3)]
    assert [(c.start_pos, len(c.tokens)) for c in step.prefill] == [(5, 8)]
    s.committed(step)
    short.output_ids.append(43)
    step = s.schedule()
    assert step.prefill[0].start_pos == 13 and step.prefill[0].last is True
    assert len(step.prefill[0].tokens) == 7


def test_finish_frees_slot_for_the_next_request() -> None:
    s = Scheduler(max_batch_size=1, max_queue=2, prefill_budget=64)
    a, b = make_seq(2, "a"), make_seq(2, "b")
    s.add(a)
    s.add(b)
    s.schedule()
    slot = a.slot
    s.finish(a)
    s.schedule()
    assert b.status == SeqStatus.RUNNING and b.slot == slot
    s.finish(b)
    assert not s.has_work


def test_preempt_half_requeues_newest_first_and_recomputes_output() -> None:
    s = Scheduler(max_batch_size=4, max_queue=4, prefill_budget=64)
    seqs = [make_seq(2, f"r{i}") for i in range(4)]
    for q in seqs:
        s.add(q)
    s.committed(s.schedule())
    for q in seqs:
        q.output_ids.append(7)
    newest_slots = {seqs[2].slot, seqs[3].slot}
    freed = s.preempt_half()
    assert set(freed) == newest_slots and s.effective_max_batch_size == 2
    assert list(s.waiting) == seqs[2:]
    s.finish(seqs[0])
    step = s.schedule()
    # the re-admitted sequence recomputes prompt + the token it already produced
    chunk = next(c for c in step.prefill)
    assert list(chunk.tokens) == [1, 2, 7] and chunk.last


class Kept:
    """The kept-KV view of a backend: slot -> the tokens its KV holds (pure bookkeeping)."""

    def __init__(self, held: dict[int, list[int]], copy: bool = False) -> None:
        self.held, self.supports_prefix_copy = held, copy

    def cached_prefix(self, slot: int, tokens) -> int:
        held = self.held[slot]
        return next((i for i, (a, b) in enumerate(zip(held, tokens)) if a != b),
                    min(len(held), len(tokens)))

    def kept_tokens(self, slot: int) -> int:
        return len(self.held[slot])


def test_admission_prefers_the_slot_holding_the_longest_prefix() -> None:
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64,
                  kept=Kept({0: [1, 2, 3], 1: [1, 2], 2: []}))
    seq = make_seq(5)  # prompt 1..5
    s.add(seq)
    step = s.schedule()
    assert seq.slot == 0 and seq.num_computed == 3 and s.reused_tokens == 3
    assert [(c.start_pos, list(c.tokens)) for c in step.prefill] == [(3, [4, 5])]


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    s = Scheduler(max_batch_size=1, max_queue=1, prefill_budget=64,
                  kept=Kept({0: [1, 2, 3, 4, 9]}))
    seq = make_seq(4)
    s.add(seq)
    step = s.schedule()
    assert seq.num_computed == 3 and [list(c.tokens) for c in step.prefill] == [[4]]


def test_a_new_conversation_takes_an_empty_slot_not_another_conversation() -> None:
    # slot 0 holds a conversation that starts with the system prompt 1..20; slot 1 is empty
    conv = list(range(1, 21)) + [50, 51, 52]
    s = Scheduler(max_batch_size=2, max_queue=4, prefill_budget=64, kept=Kept({0: conv, 1: []}))
    new = make_seq(22)
    new.prompt_ids = list(range(1, 21)) + [60, 61]
    s.add(new)
    step = s.schedule()
    assert new.slot == 1 and new.num_computed == 0 and not step.copies


def test_when_every_slot_loses_something_the_longest_prefix_then_lru_is_taken() -> None:
    kept = Kept({0: [1, 2, 9], 1: [1, 2, 3, 8], 2: [1, 2, 3, 7]})
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64, kept=kept)
    seq = make_seq(5)  # 1..5: slots 1 and 2 share 3 tokens, slot 0 shares 2
    s.add(seq)
    s.schedule()
    assert seq.slot in (1, 2) and seq.num_computed == 3


def test_among_slots_that_lose_something_the_least_recently_freed_is_taken() -> None:
    kept = Kept({0: [7], 1: [8], 2: [9]})
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64, kept=kept)
    first = [make_seq(1, f"w{i}") for i in range(3)]
    for seq in first:
        s.add(seq)
    s.schedule()
    for slot in (2, 0, 1):  # freed in this order: slot 2 is the least recently freed
        s.finish(next(q for q in first if q.slot == slot))
    new = make_seq(3)
    s.add(new)
    s.schedule()
    assert new.slot == 2 and new.num_computed == 0


def test_a_longer_prefix_elsewhere_is_copied_into_the_chosen_slot() -> None:
    system = list(range(1, 31))
    kept = Kept({0: system + [40, 41], 1: [], 2: []}, copy=True)
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64, kept=kept)
    a = make_seq(32, "a")
    a.prompt_ids = system + [40, 41, 42]  # continues slot 0's conversation: takes slot 0
    b = make_seq(32, "b")
    b.prompt_ids = system + [70, 71]  # shares the system prompt with the running a
    s.add(a)
    s.add(b)
    step = s.schedule()
    assert a.slot == 0 and a.num_computed == 32
    assert b.slot != 0 and b.num_computed == 30
    assert [(c.src, c.dst, c.n) for c in step.copies] == [(0, b.slot, 30)]
    assert s.reused_tokens == 62
    s.committed(step)
    assert not s.schedule().copies  # a copy is made once


def test_a_preempted_copier_gets_its_copy_again_when_readmitted() -> None:
    system = list(range(1, 31))
    kept = Kept({0: [], 1: [], 2: system + [99]}, copy=True)
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64, kept=kept)
    a, b = make_seq(32, "a"), make_seq(32, "b")
    a.prompt_ids = system + [40, 41]
    b.prompt_ids = system + [70, 71]
    s.add(a)
    s.add(b)
    step = s.schedule()  # both copy the system prompt from the free slot 2
    assert {c.dst for c in step.copies} == {a.slot, b.slot} and {c.src for c in step.copies} == {2}
    s.preempt_half()  # out of memory before the step ran: b goes back to the queue
    step = s.schedule()
    assert b.slot == -1 and [(c.src, c.dst) for c in step.copies] == [(2, a.slot)]
    assert a.num_computed == 30
