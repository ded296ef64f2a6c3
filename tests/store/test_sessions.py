"""The SessionStore contract, run against every backend (memory, sqlite, a real Redis)."""

from __future__ import annotations

import asyncio
import time

import pytest

from babeldesk.config import StoreConfig
from babeldesk.errors import InvalidRequest, NotFound
from babeldesk.store import SessionStore, Turn, open_session_store
from tests.clock import Clock

from . import ops


async def test_turns_come_back_in_order_with_every_field(store: SessionStore) -> None:
    sid = await ops.create(store)
    user = Turn("user", "¿Cuándo llega mi reembolso?", language="es", time=1_700_000_000.5)
    bot = Turn("assistant", "En 5 a 7 días hábiles.", language="es", source="knowledge_base",
               intent="refund_status", confidence=0.93, time=1_700_000_001.25)
    assert await ops.append(store, sid, user) == 1
    assert await ops.append(store, sid, bot) == 2
    transcript = await store.transcript(sid)
    assert transcript.session_id == sid
    assert transcript.turns == (user, bot)
    assert transcript.created_at > 1_700_000_000
    assert not transcript.handed_off
    body = transcript.to_dict()
    assert body["handoff"] is None
    assert body["turns"][1] == {"role": "assistant", "text": "En 5 a 7 días hábiles.",
                                "language": "es", "source": "knowledge_base",
                                "intent": "refund_status", "confidence": 0.93,
                                "time": 1_700_000_001.25, "agent": None, "translation": None,
                                "translation_language": None, "untranslated": False}
    assert body["state"] == "bot" and body["agent"] is None


async def test_last_n_turns(store: SessionStore) -> None:
    sid = await ops.create(store)
    for i in range(5):
        await ops.append(store, sid, Turn("user", f"message {i}"))
    last = await store.transcript(sid, last=2)
    assert [t.text for t in last.turns] == ["message 3", "message 4"]
    assert len((await store.transcript(sid, last=50)).turns) == 5


async def test_create_with_an_id_is_idempotent(store: SessionStore) -> None:
    assert await ops.create(store, "abc123") == "abc123"
    await ops.append(store, "abc123", Turn("user", "hello"))
    assert await ops.create(store, "abc123") == "abc123"
    assert len((await store.transcript("abc123")).turns) == 1
    assert await ops.create(store) != await ops.create(store)


async def test_unknown_session_is_not_found(store: SessionStore) -> None:
    assert not await ops.exists(store, "nope")
    with pytest.raises(NotFound) as err:
        await store.transcript("nope")
    assert err.value.status == 404
    with pytest.raises(NotFound):
        await ops.append(store, "nope", Turn("user", "hi"))
    with pytest.raises(NotFound):
        await store.delete("nope")
    with pytest.raises(NotFound):
        await ops.mark_handoff(store, "nope", "asked_for_human")
    with pytest.raises(NotFound):
        await ops.language(store, "nope")


async def test_delete_erases_the_session(store: SessionStore) -> None:
    sid = await ops.create(store)
    await ops.append(store, sid, Turn("user", "delete me"))
    await ops.set_language(store, sid, "de")
    await store.delete(sid)
    assert not await ops.exists(store, sid)
    with pytest.raises(NotFound):
        await store.transcript(sid)
    # the same id starts empty if created again
    await ops.create(store, sid)
    again = await store.transcript(sid)
    assert again.turns == () and again.language is None


async def test_handoff_and_language_lock(store: SessionStore) -> None:
    sid = await ops.create(store)
    assert await ops.language(store, sid) is None
    await ops.set_language(store, sid, "ja")
    assert await ops.language(store, sid) == "ja"
    await ops.set_language(store, sid, None)
    assert await ops.language(store, sid) is None
    await ops.set_language(store, sid, "ko")
    await ops.mark_handoff(store, sid, "repeated_failure")
    transcript = await store.transcript(sid)
    assert transcript.language == "ko"
    assert transcript.handoff_reason == "repeated_failure"
    assert transcript.handed_off
    assert transcript.to_dict()["handoff"] == {"reason": "repeated_failure"}


async def test_stored_text_is_redacted_when_on(store: SessionStore) -> None:
    sid = await ops.create(store)
    await ops.append(store, sid,
                     Turn("user", "mail me at anna@example.de, card 4111 1111 1111 1111"))
    (turn,) = (await store.transcript(sid)).turns
    assert turn.text == "mail me at [email], card [card]"


async def test_redaction_off_stores_text_as_is(sessions_url: str) -> None:
    store = open_session_store(StoreConfig(sessions_url=sessions_url, redact=False))
    try:
        sid = await ops.create(store)
        await ops.append(store, sid, Turn("user", "anna@example.de"))
        assert (await store.transcript(sid)).turns[0].text == "anna@example.de"
    finally:
        await store.close()


async def test_idle_sessions_expire(sessions_url: str) -> None:
    clock = Clock(time.time)
    store = open_session_store(StoreConfig(sessions_url=sessions_url, session_ttl_s=0.3), clock)
    try:
        sid = await ops.create(store)
        await ops.append(store, sid, Turn("user", "still here"))
        assert await ops.exists(store, sid)
        clock.advance(1.0)  # memory and sqlite expire on the store's clock
        deadline = time.monotonic() + 10  # Redis on its own: wait for it
        while await ops.exists(store, sid):
            assert time.monotonic() < deadline, "the session outlived its TTL"
            await asyncio.sleep(0.02)
        with pytest.raises(NotFound):
            await store.transcript(sid)
        # the customer comes back with the old id: a fresh, empty session, on every backend
        assert await store.record(sid, [Turn("user", "back again")], create=True) == 1
        assert [t.text for t in (await store.transcript(sid)).turns] == ["back again"]
    finally:
        await store.close()


async def test_concurrent_appends_in_one_process_lose_nothing(store: SessionStore) -> None:
    sid = await ops.create(store)
    counts = await asyncio.gather(*(ops.append(store, sid, Turn("user", f"t{i}"))
                                    for i in range(40)))
    assert sorted(counts) == list(range(1, 41))  # every append got its own slot
    texts = [t.text for t in (await store.transcript(sid)).turns]
    assert sorted(texts) == sorted(f"t{i}" for i in range(40))


def test_a_turn_needs_a_known_role() -> None:
    with pytest.raises(InvalidRequest):
        Turn("robot", "hi")


async def test_record_writes_a_whole_message_at_once(store: SessionStore) -> None:
    from babeldesk.store import KEEP

    sid = "rec-1"
    with pytest.raises(NotFound):  # no session, and not asked to create one
        await store.record(sid, [Turn("user", "hola")])
    q = Turn("user", "Quiero hablar con una persona, mi correo es ana@example.com", language="es")
    a = Turn("assistant", "Te paso con un compañero.", language="es", source="handoff")
    assert await store.record(sid, [q, a], create=True, language="es",
                              handoff_reason="customer_request") == 2
    t = await store.transcript(sid)
    assert [x.text for x in t.turns] == [
        "Quiero hablar con una persona, mi correo es [email]", "Te paso con un compañero."]
    assert (t.language, t.handoff_reason) == ("es", "customer_request")
    # a later message keeps the lock (KEEP), may change it, and create=True keeps the session
    assert await store.record(sid, [Turn("user", "gracias")], create=True, language=KEEP) == 3
    assert (await store.transcript(sid)).language == "es"
    assert await store.record(sid, [Turn("user", "merci")], language="es>fr") == 4
    t = await store.transcript(sid)
    assert t.language == "es>fr" and len(t.turns) == 4 and t.created_at > 0
    assert await store.record(sid, [Turn("user", "x")], language=None) == 5
    assert (await store.transcript(sid)).language is None


async def test_concurrent_records_are_each_committed_once_and_in_order(
        store: SessionStore) -> None:
    # many at once: sqlite folds them into group commits, each record still atomic
    sids = [f"grp-{i}" for i in range(40)]
    counts = await asyncio.gather(*[
        store.record(sid, [Turn("user", f"q {sid}"), Turn("assistant", f"a {sid}")], create=True)
        for sid in sids])
    assert counts == [2] * 40
    bad = await asyncio.gather(store.record("grp-0", [Turn("user", "again")]),
                               store.record("missing", [Turn("user", "lost?")]),
                               store.record("grp-1", [Turn("user", "again")]),
                               return_exceptions=True)
    assert bad[0] == 3 and bad[2] == 3 and isinstance(bad[1], NotFound)  # fails alone
    for sid in sids[2:]:
        assert [t.text for t in (await store.transcript(sid)).turns] == [f"q {sid}", f"a {sid}"]
    assert not await ops.exists(store, "missing")
