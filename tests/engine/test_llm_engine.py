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
        done = await collect(e.stream_chat(req(QUESTIONS[1])))
        assert done.text

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
    finally:
        e.shutdown()
    assert oom >= 1 and limit < 8
    for q, out in zip(QUESTIONS * 2, outs):
        assert out.text == alone[q]  # preempted sequences resume; nothing twice, nothing lost


async def _solo_answers() -> dict[str, str]:
    e = engine()
    try:
        return {q: (await collect(e.stream_chat(req(q)))).text for q in QUESTIONS}
    finally:
        e.shutdown()


def test_prefix_cache_reuses_the_shared_system_prompt_without_changing_answers() -> None:
    system = ("You are the support assistant of a small online shop. Answer briefly and "
              "politely, in the customer's language, using only what you know about the shop.")

    def chat(q: str) -> ChatRequest:
        return ChatRequest([ChatMessage("system", system), ChatMessage("user", q)],
                           SamplingParams(max_tokens=16, temperature=0.0))

    answers = {}
    for on in (False, True):
        e = engine(prefix_cache=on, max_batch_size=2)
        try:
            outs = [asyncio.run(collect(e.stream_chat(chat(q)))) for q in QUESTIONS]
            reused = e.reporter.metrics.prefix_cache_tokens_total._value.get()
            held = [len(h) for h in e.backend._held]
        finally:
            e.shutdown()
        answers[on] = [o.text for o in outs]
        if on:
            assert reused >= 3 * 20  # later requests skip the system prompt's prefill
            assert max(held) > 0  # the shared prefix stays in a slot
        else:
            assert reused == 0 and held == [0, 0]  # every slot cleared when its request ended
    assert answers[True] == answers[False]


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
