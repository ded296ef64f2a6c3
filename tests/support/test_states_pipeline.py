"""The pipeline reads the conversation state before every reply: once handed off, the
assistant is silent and the customer's messages are stored for the agent; one webhook
per handoff, however many messages follow or race; back with the assistant, it answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig, SupportConfig
from babeldesk.store import Turn, open_answer_cache, open_session_store
from babeldesk.store.base import Guard, State
from babeldesk.support.handoff import WebhookNotifier
from babeldesk.knowledge.kb import load_kb
from babeldesk.knowledge.matcher import IntentMatcher, MatcherConfig
from babeldesk.support.pipeline import SupportPipeline, SupportRequest
from babeldesk.telemetry.metrics import Metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kb_and_matcher():
    kb = load_kb()
    return kb, IntentMatcher.from_kb(kb, MatcherConfig(threads=1))


@pytest.fixture(params=["sqlite", "redis"])
def sessions_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    from tests.store.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    request.addfinalizer(server.kill)
    return server.url


def test_handed_off_conversation_is_the_agents(kb_and_matcher, sessions_url: str,
                                               webhook_receiver) -> None:
    kb, matcher = kb_and_matcher
    receiver = webhook_receiver()
    store_cfg = StoreConfig(sessions_url=sessions_url)

    async def run() -> None:
        sessions = open_session_store(store_cfg)
        notifier = WebhookNotifier(receiver.url, attempts=2, first_backoff_s=0.05)
        metrics = Metrics("test")
        p = SupportPipeline(kb=kb, matcher=matcher, sessions=sessions,
                            cache=open_answer_cache(store_cfg), model=None,
                            config=SupportConfig(verifier=False), metrics=metrics,
                            notifier=notifier)
        first = await p.handle(SupportRequest("¿Cuánto tarda el envío a España?"))
        sid = first.session_id
        assert first.source == "knowledge_base" and first.state == "bot"
        # three requests for a person at once: one handoff, one webhook
        replies = await asyncio.gather(*(
            p.handle(SupportRequest("Quiero hablar con una persona, por favor", sid))
            for _ in range(3)))
        assert sorted(r.source for r in replies) == ["agent", "agent", "handoff"]
        assert all(r.state == "waiting_for_agent" for r in replies)
        # later messages: stored for the agent, no assistant reply, no new webhook
        later = await p.handle(SupportRequest("¿Cuánto tarda el envío a España?", sid))
        assert (later.source, later.reply, later.state) == ("agent", "", "waiting_for_agent")
        assert later.handoff == {"reason": "customer_request"}
        t = await sessions.transcript(sid)
        assert [x.role for x in t.turns] == ["user", "assistant", "user", "assistant",
                                             "user", "user", "user"]
        assert t.turns[-1].text == "¿Cuánto tarda el envío a España?"
        # an agent claims, then returns it to the assistant: it answers again
        await sessions.record(sid, [], guard=Guard.of(State.WAITING), state=State.WITH_AGENT,
                              agent="ana")
        assert (await p.handle(SupportRequest("hola?", sid))).source == "agent"
        await sessions.record(sid, [Turn("system", "returned")], guard=Guard.of(
            State.WITH_AGENT, agent="ana"), state=State.BOT)
        back = await p.handle(SupportRequest("¿Cuánto tarda el envío a España?", sid))
        assert back.source in ("knowledge_base", "cache") and back.state == "bot"
        # closed: the customer's next message reopens it with the assistant
        await sessions.record(sid, [], guard=Guard.of(State.BOT), state=State.CLOSED)
        again = await p.handle(SupportRequest("¿Cuánto tarda el envío a España?", sid))
        assert again.source in ("knowledge_base", "cache")
        assert (await sessions.transcript(sid)).state == "bot"
        await notifier.aclose()
        await sessions.close()
        text = metrics.render().decode()
        assert 'babeldesk_handoffs_total{reason="customer_request"} 1.0' in text
        assert 'babeldesk_messages_total{language="es",source="agent"} 4.0' in text

    asyncio.run(run())
    assert [e["type"] for e in receiver.events] == ["handoff.requested"]
