"""The embedded session store: one SQLite file in WAL mode.

Survives restarts: WAL with ``synchronous=NORMAL`` keeps every acknowledged append through
a process crash or restart (the WAL is written before the commit returns; fsync happens at
checkpoints); ``fsync=True`` (``synchronous=FULL``) also survives power loss, at ~5 ms a write. Several
processes may append to one session at once: every write is one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's single writer lock before reading the next turn number,
so turns are numbered without gaps or duplicates; a writer that finds the lock taken
waits up to ``BUSY_TIMEOUT_S``. ``delete`` zeroes the freed pages (``secure_delete``) and
truncates the WAL, so an erased transcript is not left readable in either file.

sqlite3 blocks, so every call runs on one worker thread owned by the store; that thread
owns the connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from babeldesk.errors import NotFound, Unavailable
from babeldesk.store.base import Transcript, Turn
from babeldesk.store.redact import Redactor

T = TypeVar("T")
BUSY_TIMEOUT_S = 10.0  # wait for another process's write transaction, seconds

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,      -- Unix seconds
    updated_at REAL NOT NULL,      -- Unix seconds of the last write; drives expiry
    language TEXT,
    handoff_reason TEXT
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
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
"""


def sqlite_path(url: str) -> Path:
    """``sqlite:///rel/to.db`` -> ``rel/to.db``; ``sqlite:////abs.db`` -> ``/abs.db``."""
    raw = url.removeprefix("sqlite:///")
    if not raw or raw == url:
        raise ValueError(f"not a sqlite:///path URL: {url!r}")
    return Path(raw).expanduser()


class SqliteSessionStore:
    def __init__(self, path: str | Path, ttl_s: float, redactor: Redactor | None = None,
                 retry_after_s: float = 5.0, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._redactor = redactor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="babeldesk-sqlite")
        self._conn: sqlite3.Connection | None = None  # used only on the executor thread

    # --- plumbing (executor thread) ---------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise Unavailable(f"session store unavailable: {exc}",
                              retry_after=self.retry_after_s) from exc

    def _live(self, conn: sqlite3.Connection, session_id: str) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT created_at, updated_at, language, handoff_reason FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        if row is None or time.time() - row[1] > self.ttl_s:
            raise NotFound(f"unknown session {session_id!r}", param="session_id")
        return tuple(row)

    # --- SessionStore -----------------------------------------------------------------

    async def create(self, session_id: str | None = None) -> str:
        sid = session_id or uuid.uuid4().hex

        def op(conn: sqlite3.Connection) -> None:
            now = time.time()
            conn.execute("DELETE FROM sessions WHERE updated_at < ?", (now - self.ttl_s,))
            conn.execute(
                "INSERT OR IGNORE INTO sessions (id, created_at, updated_at) VALUES (?, ?, ?)",
                (sid, now, now),
            )

        await self._run(lambda: self._tx(op))
        return sid

    async def exists(self, session_id: str) -> bool:
        try:
            await self._run(lambda: self._tx(lambda c: self._live(c, session_id), write=False))
        except NotFound:
            return False
        return True

    async def append(self, session_id: str, turn: Turn) -> int:
        t = self._redactor.turn(turn) if self._redactor else turn

        def op(conn: sqlite3.Connection) -> int:
            self._live(conn, session_id)
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM turns WHERE session_id = ?", (session_id,)
            ).fetchone()
            conn.execute(
                "INSERT INTO turns (session_id, seq, time, role, text, language, source, intent,"
                " confidence) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, seq, t.time, t.role, t.text, t.language, t.source, t.intent,
                 t.confidence),
            )
            conn.execute("UPDATE sessions SET updated_at = ? WHERE id = ?", (time.time(), session_id))
            return int(seq) + 1

        return await self._run(lambda: self._tx(op))

    async def transcript(self, session_id: str, last: int | None = None) -> Transcript:
        def op(conn: sqlite3.Connection) -> Transcript:
            created_at, _, language, handoff = self._live(conn, session_id)
            rows = conn.execute(
                "SELECT time, role, text, language, source, intent, confidence FROM turns"
                " WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                (session_id, -1 if last is None else last),
            ).fetchall()
            turns = tuple(
                Turn(role=r[1], text=r[2], language=r[3], source=r[4], intent=r[5],
                     confidence=r[6], time=r[0])
                for r in reversed(rows)
            )
            return Transcript(session_id, created_at, turns, language, handoff)

        return await self._run(lambda: self._tx(op, write=False))

    async def delete(self, session_id: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._live(conn, session_id)
            conn.execute("DELETE FROM turns WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        def erase() -> None:
            self._tx(op)
            # copy the WAL into the (zeroed) main file and empty it; best effort when
            # another process is reading: its next checkpoint finishes the job
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await self._run(erase)

    async def _update(self, session_id: str, column: str, value: str | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            self._live(conn, session_id)
            conn.execute(f"UPDATE sessions SET {column} = ?, updated_at = ? WHERE id = ?",
                         (value, time.time(), session_id))

        await self._run(lambda: self._tx(op))

    async def mark_handoff(self, session_id: str, reason: str) -> None:
        await self._update(session_id, "handoff_reason", reason)

    async def set_language(self, session_id: str, language: str | None) -> None:
        await self._update(session_id, "language", language)

    async def get_language(self, session_id: str) -> str | None:
        row = await self._run(lambda: self._tx(lambda c: self._live(c, session_id), write=False))
        return row[2]  # type: ignore[no-any-return]

    async def ping(self) -> None:
        await self._run(lambda: self._connection().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        finally:
            self._executor.shutdown(wait=True)
