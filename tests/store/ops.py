"""Session-store steps the tests take, written with the product's own calls.

The ``SessionStore`` protocol has one write, ``record`` (what a message or an agent action
changes, atomically), and one read, ``transcript``; these helpers say the single steps the
tests set up or check (create, append, hand off, lock a language, look) in those terms,
so a test exercises the same code paths the support pipeline does.
"""

from __future__ import annotations

from babeldesk.errors import NotFound
from babeldesk.store import SessionStore, Turn, new_session_id


async def create(store: SessionStore, session_id: str | None = None) -> str:
    """A session (a fresh id like the pipeline's when none is given); an existing one is
    kept as it is."""
    sid = session_id or new_session_id()
    await store.record(sid, [], create=True)
    return sid


async def append(store: SessionStore, session_id: str, turn: Turn) -> int:
    """One turn; the number of turns after it. ``NotFound`` for an unknown session."""
    return await store.record(session_id, [turn])


async def mark_handoff(store: SessionStore, session_id: str, reason: str) -> None:
    await store.record(session_id, [], handoff_reason=reason)


async def set_language(store: SessionStore, session_id: str, language: str | None) -> None:
    await store.record(session_id, [], language=language)


async def language(store: SessionStore, session_id: str) -> str | None:
    return (await store.transcript(session_id, last=0)).language


async def exists(store: SessionStore, session_id: str) -> bool:
    try:
        await store.transcript(session_id, last=0)
    except NotFound:
        return False
    return True
