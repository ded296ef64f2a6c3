"""The pipeline in-process with real stores and a real KB + matcher, no model: handoff
webhook retries against a real HTTP server, cache bypass on a dead Redis."""

from __future__ import annotations

import asyncio

import pytest

from babeldesk.config import StoreConfig, SupportConfig
from babeldesk.store import open_answer_cache, open_session_store
from babeldesk.support.handoff import HandoffEvent, WebhookNotifier, repeats
from babeldesk.knowledge.kb import load_kb
from babeldesk.support.language_lock import LockState
from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig
from babeldesk.support.pipeline import (
    SupportPipeline, SupportRequest, decode_lock, encode_lock, validate_message,
)
from babeldesk.errors import InvalidRequest, PayloadTooLarge
from babeldesk.telemetry.metrics import Metrics
from tests.conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kb_and_matcher():
    kb = load_kb()
    return kb, IntentMatcher.from_kb(kb, MatcherConfig(threads=1))


def pipeline(kb, matcher, **kw) -> tuple[SupportPipeline, Metrics]:
    metrics = Metrics("test")
    store = StoreConfig(cache_url=kw.pop("cache_url", "memory://"), sessions_url="memory://")
    p = SupportPipeline(kb=kb, matcher=matcher, sessions=open_session_store(store),
                        cache=open_answer_cache(store), model=None,
                        config=SupportConfig(verifier=False), metrics=metrics, **kw)
    return p, metrics


def test_handoff_webhook_is_retried_and_never_delays_the_reply(kb_and_matcher, webhook_receiver) -> None:
    kb, matcher = kb_and_matcher
    receiver = webhook_receiver(failures=2)
    notifier = WebhookNotifier(receiver.url, attempts=4, first_backoff_s=0.2)
    p, metrics = pipeline(kb, matcher, notifier=notifier,
                          redact=lambda t: t.replace("555 1234", "[phone]"))

    async def run():
        reply = await p.handle(SupportRequest("I want to speak to a human agent please, call me at 555 1234"))
        assert reply.handoff == {"reason": "customer_request"} and reply.reply
        assert receiver.got == []  # the reply came back before the webhook succeeded
        await notifier.aclose()
        return reply

    reply = asyncio.run(run())
    assert notifier.delivered == 1 and notifier.failed == 0
    (event,) = receiver.events
    assert event["type"] == "handoff.requested" and event["session_id"] == reply.session_id
    assert event["reason"] == "customer_request" and "555 1234" not in event["message"]


def test_dead_webhook_gives_up_but_the_customer_is_answered(kb_and_matcher) -> None:
    kb, matcher = kb_and_matcher
    notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/nobody", attempts=2,
                               first_backoff_s=0.05)
    p, _ = pipeline(kb, matcher, notifier=notifier)

    async def run():
        reply = await p.handle(SupportRequest("let me talk to a person"))
        await notifier.aclose()
        return reply

    assert asyncio.run(run()).source == "handoff"
    assert notifier.failed == 1


def test_dead_redis_cache_is_bypassed_and_counted(kb_and_matcher) -> None:
    kb, matcher = kb_and_matcher
    p, metrics = pipeline(kb, matcher, cache_url=f"redis://127.0.0.1:{free_port()}/0")
    reply = asyncio.run(p.handle(SupportRequest("¿Cuánto tarda el envío a España?")))
    assert reply.source == "knowledge_base" and reply.language == "es"
    text = metrics.render().decode()
    assert 'babeldesk_cache_lookups_total{kind="model",result="error"}' in text


def test_without_a_model_an_unknown_question_is_handed_off(kb_and_matcher) -> None:
    kb, matcher = kb_and_matcher
    p, _ = pipeline(kb, matcher)
    reply = asyncio.run(p.handle(SupportRequest("What's the weather like on Mars today?")))
    assert reply.source == "handoff" and reply.handoff == {"reason": "low_confidence"}
    assert reply.intent is None


def test_the_locale_hint_decides_a_short_first_message(kb_and_matcher) -> None:
    kb, matcher = kb_and_matcher
    p, _ = pipeline(kb, matcher)

    async def run() -> list[str]:
        replies = [await p.handle(SupportRequest("terima kasih", locale=locale))
                   for locale in ("ms-MY", None, "id-ID", "not a locale")]
        return [r.language for r in replies]

    # "thank you" in Malay and Indonesian alike: the page's language decides; without
    # one (or with one that names nothing) the detector's own best guess stands
    assert asyncio.run(run()) == ["ms", "id", "id", "id"]


def test_earlier_messages_decide_a_short_one_before_the_lock(kb_and_matcher) -> None:
    kb, matcher = kb_and_matcher
    p, _ = pipeline(kb, matcher)

    async def run() -> list[tuple[str, str | None]]:
        first = await p.handle(SupportRequest("chao shop"))
        second = await p.handle(SupportRequest("don hang?", session_id=first.session_id))
        alone = await p.handle(SupportRequest("don hang?"))
        transcript = await p.sessions.transcript(first.session_id)
        return [(first.language, None), (second.language, transcript.language),
                (alone.language, None)]

    # "don hang?" (unaccented "order?") alone reads as English; after "chao shop" (hello,
    # shop) in the same session it is Vietnamese, and the two together lock the session
    (first, _), (second, lock), (alone, _) = asyncio.run(run())
    assert (first, second) == ("vi", "vi")
    assert lock is not None and decode_lock(lock) == LockState(locked="vi")
    assert alone == "en"


def test_lock_encoding_round_trips() -> None:
    for state in (LockState(), LockState("es"), LockState("es", "fr")):
        assert decode_lock(encode_lock(state)) == state


def test_message_validation() -> None:
    assert validate_message("  hola  ", 10) == "hola"
    with pytest.raises(InvalidRequest):
        validate_message("", 10)
    with pytest.raises(PayloadTooLarge):
        validate_message("x" * 11, 10)
    with pytest.raises(InvalidRequest):
        validate_message("abc\x00def", 10)


def test_repeats_counts_the_immediately_preceding_same_questions() -> None:
    assert repeats(["a", "b", "b"], "b") == 2
    assert repeats(["b", "a"], "b") == 0
    assert repeats([], "b") == 0
    assert repeats(["b"], None) == 0


def test_handoff_event_is_plain_data() -> None:
    e = HandoffEvent("s", "customer_request", "en", "hi", None, 1.0)
    assert e.reason == "customer_request"
