"""The engine on the real llama.cpp backend and smollm2-135m: batching must not change
greedy answers, cancellation frees slots, out-of-memory splits without losing a request."""

from __future__ import annotations

import asyncio

import pytest

from babeldesk.config import EngineConfig
from babeldesk.engine.loader import load_engine
from babeldesk.errors import ContextTooLong, QueueFull
from babeldesk.telemetry.metrics import EngineMetrics, Metrics
from babeldesk.types import ChatMessage, ChatRequest, SamplingParams, collect

pytestmark = pytest.mark.slow

QUESTIONS = [
    "How do I return a pair of shoes?",
    "Where is my order? It is late.",
    "Can I pay with PayPal?",
    "What are your opening hours?",
    "My package arrived damaged, what now?",
]


def req(q: str, **kw: object) -> ChatRequest:
    params = SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **kw})  # type: ignore[arg-type]
    return ChatRequest([ChatMessage("user", q)], params)


def engine(**kw: object):
    cfg = EngineConfig(**{"model": "smollm2-135m", "threads": 1, "max_batch_size": 8,
                          "max_model_len": 512, "max_new_tokens": 64, **kw})  # type: ignore[arg-type]
    e = load_engine(cfg, EngineMetrics(Metrics("engine")))
    e.start()
    return e


async def run_all(e, qs, **kw):
    return await asyncio.gather(*[collect(e.stream_chat(req(q, **kw))) for q in qs])


def test_batched_greedy_equals_one_at_a_time() -> None:
    e = engine(prefill_budget=16)  # small budget: prompts are prefilled in chunks
    try:
        alone = [asyncio.run(run_all(e, [q]))[0] for q in QUESTIONS]
        together = asyncio.run(run_all(e, QUESTIONS))
    finally:
        e.shutdown()
    for a, b in zip(alone, together):
        assert a.text == b.text and a.text
        assert a.usage == b.usage
    assert {c.finish_reason for c in together} <= {"stop", "length"}


def test_stop_string_and_length_finish() -> None:
    e = engine()
    try:
        q = ["Count from 1 to 20."]
        full = asyncio.run(run_all(e, q, max_tokens=40))[0]
        mid = len(full.text) // 2
        stop_at = full.text[mid:mid + 3]  # a stop string that straddles token boundaries
        cut = asyncio.run(run_all(e, q, max_tokens=40, stop=(stop_at, "never-appears")))[0]
    finally:
        e.shutdown()
    assert full.finish_reason == "length" and full.usage.completion_tokens == 40
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop_at)]


def test_cancel_frees_slot_at_once() -> None:
    e = engine(max_batch_size=2)

    async def scenario() -> None:
        s = e.stream_chat(req(QUESTIONS[0], max_tokens=200))
        first = await s.__anext__()
        assert first.finish_reason is None
        await s.aclose()  # client went away
        for _ in range(100):
            if e.num_running == 0:
                break
            await asyncio.sleep(0.02)
        assert e.num_running == 0 and e.num_waiting == 0
        assert sorted(e.scheduler._free_slots) == [0, 1] and kv_matches_bookkeeping(e)
        # the cancelled sequence's slot kept what it computed; reusing it changes nothing
        done = await collect(e.stream_chat(req(QUESTIONS[0], max_tokens=12)))
        assert done.text == cold and e.reporter.metrics.prefix_cache_tokens_total._value.get() > 0
        assert kv_matches_bookkeeping(e)

    cold_engine = engine(prefix_cache=False)
    try:
        cold = asyncio.run(collect(cold_engine.stream_chat(req(QUESTIONS[0], max_tokens=12)))).text
    finally:
        cold_engine.shutdown()
    try:
        asyncio.run(scenario())
    finally:
        e.shutdown()


def test_bad_lengths_are_client_errors() -> None:
    e = engine(max_model_len=64, max_new_tokens=16)
    try:
        with pytest.raises(ContextTooLong):
            asyncio.run(run_all(e, ["word " * 200]))
        with pytest.raises(ContextTooLong):
            asyncio.run(run_all(e, ["hi"], max_tokens=500))
    finally:
        e.shutdown()


def test_queue_bound_refuses_with_retry_after() -> None:
    e = engine(max_batch_size=1, max_queue=1)

    async def scenario() -> None:
        streams = [e.stream_chat(req(QUESTIONS[i], max_tokens=30)) for i in range(2)]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull) as exc:
            await e.stream_chat(req(QUESTIONS[2])).__anext__()
        assert exc.value.retry_after >= 1
        await asyncio.gather(*firsts)
        for s in streams:
            await s.aclose()

    try:
        asyncio.run(scenario())
    finally:
        e.shutdown()


def test_out_of_memory_splits_batch_and_answers_everyone_once() -> None:
    # a cap that holds the weights plus a couple of short sequences, not eight
    probe = engine()
    weights, per_token = probe.backend.weights_bytes(), probe.backend.kv_bytes_per_token()
    probe.shutdown()
    alone = asyncio.run(_solo_answers())
    cap_mb = (weights + per_token * 150) // (1024 * 1024) + 1
    e = engine(memory_cap_mb=int(cap_mb))
    try:
        outs = asyncio.run(run_all(e, QUESTIONS * 2))
        oom = e.reporter.metrics.oom_events_total._value.get()
        limit = e.scheduler.effective_max_batch_size
        free = sorted(e.scheduler._free_slots)
        consistent = kv_matches_bookkeeping(e)
    finally:
        e.shutdown()
    assert oom >= 1 and limit < 8
    assert free == list(range(8)) and consistent  # every slot back, KV as booked
    for q, out in zip(QUESTIONS * 2, outs):
        assert out.text == alone[q]  # preempted sequences resume; nothing twice, nothing lost


async def _solo_answers() -> dict[str, str]:
    e = engine()
    try:
        return {q: (await collect(e.stream_chat(req(q)))).text for q in QUESTIONS}
    finally:
        e.shutdown()


SYSTEM = ("You are the support assistant of a small online shop. Answer briefly and "
          "politely, in the customer's language, using only what you know about the shop.")
# (first question, follow-up) in the three languages the acceptance names
CONVERSATIONS = [
    ("How do I return a pair of shoes?", "And how long does the refund take?"),
    ("我的订单什么时候发货？", "可以寄到上海吗？"),
    ("¿Puedo pagar con PayPal?", "¿Y con tarjeta de crédito?"),
]


def chat(*turns: str, max_tokens: int = 16) -> ChatRequest:
    roles = ["user", "assistant"] * len(turns)
    msgs = [ChatMessage("system", SYSTEM)] + [ChatMessage(r, t) for r, t in zip(roles, turns)]
    return ChatRequest(msgs, SamplingParams(max_tokens=max_tokens, temperature=0.0))


def exact(**kw: object):
    """An engine whose llama.cpp batches stay under 64 rows: below that the CPU kernels
    compute each row alike whatever else is in the batch (measured on smollm2's file: a
    prompt prefilled in any split of chunks < 64 gives bit-identical logits; a chunk of
    >= 64 takes another kernel and differs by up to ~1.4 in a logit), so any difference
    in these tests is a bookkeeping error, not rounding."""
    return engine(prefill_budget=32, **kw)


def kv_matches_bookkeeping(e) -> bool:
    """Every slot's KV in llama.cpp holds exactly the tokens the backend thinks it holds."""
    b = e.backend
    return all(b._lc.llama_memory_seq_pos_max(b._mem, slot) + 1 == len(held)
               for slot, held in enumerate(b._held))


def reused(e) -> int:
    return int(e.reporter.metrics.prefix_cache_tokens_total._value.get())


async def _conversations(e) -> list[tuple[str, str, str, int, int]]:
    """Each conversation's first answer, second answer, its first question asked again,
    the prompt tokens the engine reused for the second turn, the first turn's prompt."""
    out = []
    for q, follow in CONVERSATIONS:
        a1 = (await collect(e.stream_chat(chat(q)))).text
        before = reused(e)
        a2 = (await collect(e.stream_chat(chat(q, a1, follow)))).text
        turn2_reused = reused(e) - before
        again = (await collect(e.stream_chat(chat(q)))).text
        out.append((a1, a2, again, turn2_reused, len(e.encode(chat(q).messages))))
    return out


def test_prefix_reuse_gives_the_same_greedy_tokens_as_a_cold_prefill() -> None:
    runs = {}
    for on in (False, True):
        e = exact(prefix_cache=on, max_batch_size=4)
        try:
            runs[on] = asyncio.run(_conversations(e))
            assert kv_matches_bookkeeping(e)
            held = [len(h) for h in e.backend._held]
            total = reused(e)
        finally:
            e.shutdown()
        if not on:
            assert total == 0 and held == [0] * 4  # every slot cleared when its request ended
    for (q, follow), cold, warm in zip(CONVERSATIONS, runs[False], runs[True]):
        assert cold[:3] == warm[:3], q  # en, zh, es: first turn, second turn, repeat
        assert warm[0] == warm[2] and warm[0]
        # the second turn prefilled only what follows the first turn's prompt and answer
        assert warm[3] >= warm[4] + 4


def test_a_slot_whose_prefix_is_reused_is_never_corrupted() -> None:
    """B reuses A's kept prefix (A's slot is the only one); then A's conversation continues,
    and while A generates a long answer C joins with A's prompt as its prefix."""
    (qa, fa), (qb, _) = CONVERSATIONS[0], CONVERSATIONS[2]
    cold = exact(prefix_cache=False, max_batch_size=2)
    try:
        a1 = asyncio.run(collect(cold.stream_chat(chat(qa))))
        a2_cold = asyncio.run(collect(cold.stream_chat(chat(qa, a1.text, fa, max_tokens=40)))).text
        b_cold = asyncio.run(collect(cold.stream_chat(chat(qb)))).text
        c_cold = asyncio.run(collect(cold.stream_chat(chat(qa, a1.text, "Thanks!")))).text
    finally:
        cold.shutdown()

    async def together(e) -> tuple[str, str]:
        long = asyncio.ensure_future(collect(e.stream_chat(chat(qa, a1.text, fa, max_tokens=40))))
        while e.num_running == 0:
            await asyncio.sleep(0.005)
        c = await collect(e.stream_chat(chat(qa, a1.text, "Thanks!")))
        return (await long).text, c.text

    e = exact(prefix_cache=True, max_batch_size=1)
    try:
        assert asyncio.run(collect(e.stream_chat(chat(qa)))).text == a1.text
        before = reused(e)
        assert asyncio.run(collect(e.stream_chat(chat(qb)))).text == b_cold  # in A's slot
        assert reused(e) - before > 0  # B reused the system prompt A left there
        assert asyncio.run(collect(e.stream_chat(chat(qa, a1.text, fa, max_tokens=40)))).text \
            == a2_cold  # A goes on after B took its slot: nothing of B leaks in
        assert kv_matches_bookkeeping(e)
    finally:
        e.shutdown()
    e = exact(prefix_cache=True, max_batch_size=3)
    try:
        asyncio.run(collect(e.stream_chat(chat(qa))))
        asyncio.run(collect(e.stream_chat(chat(qb))))  # the other slot holds only B
        before = reused(e)
        a2, c = asyncio.run(together(e))  # A's second turn runs while C shares its prefix
        assert (a2, c) == (a2_cold, c_cold)
        # C copied A's first turn (prompt and answer) from A's running slot
        assert reused(e) - before >= 2 * len(e.encode(chat(qa).messages))
        assert kv_matches_bookkeeping(e)
    finally:
        e.shutdown()


def test_requantize_reencodes_once_into_the_cache_and_still_batches_exactly(
        tmp_path, monkeypatch) -> None:
    from babeldesk.config import Requantize
    from babeldesk.engine.backends import llamacpp
    from babeldesk.engine.models import resolve_model

    source = resolve_model("smollm2-135m").path
    monkeypatch.setenv("BABELDESK_CACHE_DIR", str(tmp_path))
    made = llamacpp.requantized(source, Requantize.Q4_0, threads=1)
    assert made.parent == tmp_path / "requantized" and made.stat().st_size > 0
    assert made.stat().st_size < source.stat().st_size  # q4_0 is smaller than the file's q4_1
    assert llamacpp.requantized(source, Requantize.Q4_0, threads=1) == made  # cached
    stamp = made.stat().st_mtime_ns
    e = engine(model=str(source), requantize=Requantize.Q4_0)
    try:
        assert e.backend.weights_type == "q4_0"
        alone = [asyncio.run(run_all(e, [q]))[0] for q in QUESTIONS[:3]]
        together = asyncio.run(run_all(e, QUESTIONS[:3]))
    finally:
        e.shutdown()
    assert made.stat().st_mtime_ns == stamp  # the engine reused the cached file
    assert [a.text for a in alone] == [b.text for b in together]
    assert all(a.text for a in alone)
    assert not list((tmp_path / "requantized").glob("*.tmp"))
