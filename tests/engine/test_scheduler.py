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


def test_admission_prefers_the_slot_holding_the_longest_prefix() -> None:
    held = {0: [1, 2, 3, 9], 1: [1, 2], 2: []}
    s = Scheduler(max_batch_size=3, max_queue=4, prefill_budget=64,
                  cached_prefix=lambda slot, toks: len(
                      [1 for a, b in zip(held[slot], toks) if a == b]))
    seq = make_seq(5)  # prompt 1..5
    s.add(seq)
    step = s.schedule()
    assert seq.slot == 0 and seq.num_computed == 3 and s.reused_tokens == 3
    assert [(c.start_pos, list(c.tokens)) for c in step.prefill] == [(3, [4, 5])]


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    s = Scheduler(max_batch_size=1, max_queue=1, prefill_budget=64,
                  cached_prefix=lambda slot, toks: len(toks))
    seq = make_seq(4)
    s.add(seq)
    step = s.schedule()
    assert seq.num_computed == 3 and [list(c.tokens) for c in step.prefill] == [[4]]


def test_shared_prefix_is_measured_against_other_prompts_only() -> None:
    s = Scheduler(max_batch_size=2, max_queue=2, prefill_budget=64)
    a, b = make_seq(6, "a"), make_seq(3, "b")
    b.prompt_ids = [1, 2, 7]
    s.add(a)
    s.add(b)
    s.schedule()
    assert s.shared_prefix(a) == 2 and s.shared_prefix(b) == 2
