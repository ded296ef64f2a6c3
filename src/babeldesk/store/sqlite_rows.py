"""The sqlite session store's schema, its migration and the mapping of turns to rows.

A turn's rarely-set fields (agent, translation, translation_language, untranslated) live
in one JSON column, ``extra``, so adding such a field needs no schema change.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from babeldesk.errors import Unavailable
from babeldesk.store.base import Turn

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,      -- Unix seconds
    updated_at REAL NOT NULL,      -- Unix seconds of the last write; drives expiry
    language TEXT,
    handoff_reason TEXT,
    state TEXT NOT NULL DEFAULT 'bot',  -- store.base.State
    agent TEXT,                    -- owner while with_agent (kept after, for the record)
    agent_language TEXT,           -- the language that agent reads and writes
    state_since REAL               -- Unix seconds of the last state change
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated_at);
CREATE TABLE IF NOT EXISTS turns (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,          -- 0, 1, 2, ... per session, no gaps
    time REAL NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    language TEXT,
    source TEXT,
    intent TEXT,
    confidence REAL,
    extra TEXT,                    -- JSON of the turn's optional fields, NULL when none
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""
# columns added after the first release: (table, column, declaration)
_ADDED = (("sessions", "state", "TEXT NOT NULL DEFAULT 'bot'"), ("sessions", "agent", "TEXT"),
          ("sessions", "agent_language", "TEXT"),
          ("sessions", "state_since", "REAL"), ("turns", "extra", "TEXT"))
_INDEXES = "CREATE INDEX IF NOT EXISTS sessions_state ON sessions (state, state_since);"

INSERT_TURN = ("INSERT INTO turns (session_id, seq, time, role, text, language, source, intent,"
               " confidence, extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
SELECT_TURN = "time, role, text, language, source, intent, confidence, extra"
_EXTRA = ("agent", "translation", "translation_language", "untranslated")


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/to.db`` -> ``rel/to.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    raw = url.removeprefix("sqlite:///")
    if not raw or raw == url:
        raise ValueError(f"not a sqlite:///path URL: {url!r}")
    return Path(raw).expanduser()


def create_schema(conn: sqlite3.Connection) -> None:
    """The tables, with the columns a file written by an older release lacks added."""
    conn.executescript(SCHEMA)
    for table, column, decl in _ADDED:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    conn.executescript(_INDEXES)


def turn_row(session_id: str, seq: int, t: Turn) -> tuple[Any, ...]:
    extra = {k: getattr(t, k) for k in _EXTRA if getattr(t, k)}
    return (session_id, seq, t.time, t.role, t.text, t.language, t.source, t.intent,
            t.confidence, json.dumps(extra, ensure_ascii=False) if extra else None)


def row_turn(r: tuple[Any, ...]) -> Turn:
    extra = json.loads(r[7]) if r[7] else {}
    return Turn(role=r[1], text=r[2], language=r[3], source=r[4], intent=r[5],
                confidence=r[6], time=r[0], **{k: v for k, v in extra.items() if k in _EXTRA})


def waiting_rows(conn: sqlite3.Connection, since: float, limit: int) -> list[tuple[str, float]]:
    """Sessions in waiting_for_agent written after ``since``, longest waiting first."""
    rows = conn.execute(
        "SELECT id, COALESCE(state_since, created_at) FROM sessions WHERE state = ?"
        " AND updated_at >= ? ORDER BY state_since LIMIT ?",
        ("waiting_for_agent", since, limit)).fetchall()
    return [(r[0], float(r[1])) for r in rows]


def ids_since(conn: sqlite3.Connection, since: float) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM sessions WHERE updated_at >= ?", (since,))]


def deliver(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException | None,
            results: list[tuple[bool, Any]], retry_after_s: float) -> None:
    """A group commit's outcome to its callers: each its result or its own error, or all
    the group's error (a sqlite error -> 503)."""
    if isinstance(exc, sqlite3.Error):
        exc = Unavailable(f"session store unavailable: {exc}", retry_after=retry_after_s)
    for i, (_, fut) in enumerate(batch):
        if fut.done():  # the caller was cancelled; its write is committed (or not) anyway
            continue
        if exc is not None:
            fut.set_exception(exc)
        elif results[i][0]:
            fut.set_result(results[i][1])
        else:
            fut.set_exception(results[i][1])
