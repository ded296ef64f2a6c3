"""Conversation states (bot -> waiting_for_agent -> with_agent -> closed, or back to bot)
on every backend: guarded atomic moves, the agents' queue, agent turns with translations."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig
from babeldesk.errors import Conflict, NotFound
from babeldesk.store import SessionStore, Turn, open_session_store
from babeldesk.store.base import Guard, State


async def _handed_off(store: SessionStore, sid: str) -> None:
    await store.record(sid, [Turn("user", "quiero una persona", language="es"),
                             Turn("assistant", "Te paso con un compañero.", source="handoff")],
                       create=True, language="es", handoff_reason="customer_request",
                       guard=Guard.of(State.BOT), state=State.WAITING)


async def test_a_handoff_queues_the_conversation_once(store: SessionStore) -> None:
    await store.record("s1", [Turn("user", "hola")], create=True, guard=Guard.of(State.BOT))
    t = await store.transcript("s1")
    assert (t.state, t.agent, t.state_since) == ("bot", None, None)
    await _handed_off(store, "s1")
    t = await store.transcript("s1")
    assert t.state == "waiting_for_agent" and t.handoff_reason == "customer_request"
    assert t.state_since is not None and t.state_since > 0
    assert [sid for sid, _ in await store.waiting()] == ["s1"]
    # the assistant's next answer is refused: the same guard no longer holds, nothing written
    with pytest.raises(Conflict) as err:
        await store.record("s1", [Turn("user", "¿hola?"), Turn("assistant", "x")],
                           guard=Guard.of(State.BOT), state=State.WAITING,
                           handoff_reason="customer_request")
    assert err.value.status == 409 and err.value.state == "waiting_for_agent"
    assert len((await store.transcript("s1")).turns) == 3
    # a customer message while waiting is stored unguarded, for the agent
    assert await store.record("s1", [Turn("user", "¿hay alguien?")]) == 4


async def test_only_one_of_many_agents_claims(store: SessionStore) -> None:
    await _handed_off(store, "s2")
    results = await asyncio.gather(*(
        store.record("s2", [Turn("system", f"{name} joined")], guard=Guard.of(State.WAITING),
                     state=State.WITH_AGENT, agent=name)
        for name in ("ana", "ben", "chen", "dev", "eli")), return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, Conflict)]
    assert len(won) == 1 and len(lost) == 4
    t = await store.transcript("s2")
    assert t.state == "with_agent" and t.agent in ("ana", "ben", "chen", "dev", "eli")
    assert [x.role for x in t.turns].count("system") == 1
    assert all(e.state == "with_agent" and e.owner == t.agent for e in lost)
    assert await store.waiting() == []


async def test_agent_reply_needs_the_owner_and_keeps_both_versions(store: SessionStore) -> None:
    await _handed_off(store, "s3")
    await store.record("s3", [], guard=Guard.of(State.WAITING), state=State.WITH_AGENT,
                       agent="ana")
    reply = Turn("agent", "Your refund was sent today.", language="en", agent="ana",
                 translation="Tu reembolso se envió hoy.", translation_language="es")
    with pytest.raises(Conflict) as err:
        await store.record("s3", [reply], guard=Guard.of(State.WITH_AGENT, agent="ben"))
    assert err.value.owner == "ana"
    assert await store.record("s3", [reply], guard=Guard.of(State.WITH_AGENT, agent="ana")) == 3
    flagged = Turn("agent", "ok!!", language="en", agent="ana", untranslated=True)
    await store.record("s3", [flagged], guard=Guard.of(State.WITH_AGENT, agent="ana"))
    t = await store.transcript("s3")
    assert t.turns[2] == reply and t.turns[3].untranslated and t.turns[3].translation is None
    # close, then nothing more from the agent; the customer's next message reopens it
    await store.record("s3", [], guard=Guard.of(State.WITH_AGENT, agent="ana"),
                       state=State.CLOSED)
    with pytest.raises(Conflict) as err:
        await store.record("s3", [reply], guard=Guard.of(State.WITH_AGENT, agent="ana"))
    assert err.value.state == "closed"
    await store.record("s3", [], guard=Guard.of(State.CLOSED), state=State.BOT, agent=None)
    t = await store.transcript("s3")
    assert (t.state, t.agent, len(t.turns)) == ("bot", None, 4)


async def test_queue_is_oldest_first_and_forgets_erased_sessions(store: SessionStore) -> None:
    for sid in ("q1", "q2", "q3"):
        await _handed_off(store, sid)
    assert [sid for sid, _ in await store.waiting()] == ["q1", "q2", "q3"]
    assert [sid for sid, _ in await store.waiting(limit=2)] == ["q1", "q2"]
    await store.delete("q2")
    await store.record("q3", [], guard=Guard.of(State.WAITING), state=State.BOT)
    assert [sid for sid, _ in await store.waiting()] == ["q1"]
    with pytest.raises(NotFound):  # a guard on a session that does not exist
        await store.record("nope", [Turn("user", "x")], guard=Guard.of(State.WAITING))


async def test_an_old_sqlite_file_gets_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL,
            updated_at REAL NOT NULL, language TEXT, handoff_reason TEXT);
        CREATE TABLE turns (session_id TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL,
            role TEXT NOT NULL, text TEXT NOT NULL, language TEXT, source TEXT, intent TEXT,
            confidence REAL, PRIMARY KEY (session_id, seq)) WITHOUT ROWID;
        INSERT INTO sessions VALUES ('old', strftime('%s','now'), strftime('%s','now'), 'de', NULL);
        INSERT INTO turns VALUES ('old', 0, 1.0, 'user', 'Hallo', 'de', NULL, NULL, NULL);
    """)
    conn.close()
    store = open_session_store(StoreConfig(sessions_url=f"sqlite:///{path}"))
    try:
        t = await store.transcript("old")
        assert (t.state, [x.text for x in t.turns]) == ("bot", ["Hallo"])
        await _handed_off(store, "old")
        assert (await store.transcript("old")).state == "waiting_for_agent"
    finally:
        await store.close()


async def test_the_agents_language_goes_and_comes_with_the_agent(store: SessionStore) -> None:
    await _handed_off(store, "al")
    await store.record("al", [], guard=Guard.of(State.WAITING), state=State.WITH_AGENT,
                       agent="ana", agent_language="en")
    t = await store.transcript("al")
    assert (t.agent, t.agent_language) == ("ana", "en")
    await store.record("al", [], guard=Guard.of(State.WITH_AGENT, agent="ana"), state=State.BOT,
                       agent=None)
    t = await store.transcript("al")
    assert (t.state, t.agent, t.agent_language) == ("bot", None, None)
