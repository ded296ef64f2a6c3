"""The embedded session store: one SQLite file in WAL mode.

Survives restarts: WAL with ``synchronous=NORMAL`` keeps every acknowledged append through
a process crash or restart (the WAL is written before the commit returns; fsync happens at
checkpoints); ``fsync=True`` (``synchronous=FULL``) also survives power loss, at ~5 ms a write. Several
processes may append to one session at once: every write is one ``BEGIN IMMEDIATE``
transaction, which takes SQLite's single writer lock before reading the next turn number,
so turns are numbered without gaps or duplicates; a writer that finds the lock taken
waits up to ``BUSY_TIMEOUT_S``. ``delete`` zeroes the freed pages (``secure_delete``) and
truncates the WAL, so an erased transcript is not left readable in either file.

sqlite3 blocks, so reads and rare writes run on one worker thread owned by the store,
which owns its connection. ``record`` (all a customer message writes) is group-committed
on the event loop thread instead: the records of one loop iteration are written together
in one transaction (a write for an unknown session fails alone, having written nothing),
and each caller is answered after the COMMIT that holds its turns. That connection never
waits: a WAL append without fsync takes microseconds, and its checkpoints (which fsync)
run on the worker thread every ``CHECKPOINT_EVERY`` commits. When another process holds
the write lock, the group goes to the worker thread, which waits for it (and so do the
groups after it, in order). On one core this is one commit and no thread hop for many
messages, instead of four commits and four hops per message. Under steady load a group
also waits ``GROUP_LINGER_S`` for company: a record that arrives within that time of the
last commit is committed that long later, with whatever else came meanwhile (a commit
costs ~70 us of CPU for one record and ~20 us a record in a group of 16, measured here);
a record after a quiet spell is committed at once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from babeldesk.errors import BabeldeskError, NotFound, Unavailable
from babeldesk.store.base import KEEP, Guard, Keep, State, Transcript, Turn
from babeldesk.store.redact import Redactor
from babeldesk.store.sqlite_rows import INSERT_TURN, SELECT_TURN, create_schema, row_turn
from babeldesk.store.sqlite_rows import deliver, ids_since, turn_row, waiting_rows
from babeldesk.store.sqlite_rows import sqlite_path as sqlite_path  # imported from here

T = TypeVar("T")
log = logging.getLogger(__name__)
BUSY_TIMEOUT_S = 10.0  # wait for another process's write transaction, seconds
SWEEP_EVERY_S = 60.0  # expired sessions are deleted by a write at most this often
MAX_GROUP = 256  # records per group commit
CHECKPOINT_EVERY = 200  # inline commits between two WAL checkpoints (on the executor)
GROUP_LINGER_S = 0.001  # a group started this soon after the last commit waits this long


class SqliteSessionStore:
    def __init__(self, path: str | Path, ttl_s: float, redactor: Redactor | None = None,
                 retry_after_s: float = 5.0, fsync: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock  # Unix seconds: created_at, updated_at, expiry
        self.fsync = fsync
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._redactor = redactor
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="babeldesk-sqlite")
        self._conn: sqlite3.Connection | None = None  # used only on the executor thread
        # group commit: (write, future) waiting for the next transaction; event loop side
        self._pending: deque[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = deque()
        self._flushing = False
        self._queued_groups = 0  # groups handed to the executor and not yet committed
        self._commits = 0  # inline group commits, for the checkpoint cadence
        self._committed_at = 0.0  # loop time of the last inline commit
        self._inline: sqlite3.Connection | None = None  # the event loop thread's connection
        self._swept_at = 0.0  # clock() of the last sweep of expired sessions

    # --- plumbing (executor thread) ---------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            create_schema(conn)
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

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda: self._tx(fn, write=False))

    def _commit_group(self, group: list[Callable[[sqlite3.Connection], Any]],
                      conn: sqlite3.Connection | None = None) -> list[tuple[bool, Any]]:
        """One transaction for the group: (ok, result or error) per write. A write checks
        before it changes anything, so one that fails (NotFound) has written nothing and
        the others commit. On the executor thread with its connection, or inline with the
        loop's (``conn``)."""
        conn = conn or self._connection()
        out: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in group:
                try:
                    out.append((True, op(conn)))
                except BabeldeskError as exc:  # e.g. NotFound: this write only
                    out.append((False, exc))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in the next group commit; return once it is committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, fut))
        if not self._flushing:
            self._flushing = True
            self._schedule_flush(loop)
        return await fut

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """The next group: after this loop iteration's other records, or, when the last
        commit was less than ``GROUP_LINGER_S`` ago (records are arriving steadily), that
        much later, so one commit carries the records of several iterations."""
        if loop.time() - self._committed_at < GROUP_LINGER_S:
            loop.call_later(GROUP_LINGER_S, self._flush)
        else:
            loop.call_soon(self._flush)

    def _inline_connection(self) -> sqlite3.Connection:
        if self._inline is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the executor
            self._inline = conn
        return self._inline

    def _flush(self) -> None:
        """Event loop: commit the waiting records. Inline first (a WAL append without
        fsync takes microseconds; no thread hop); when another process holds the write
        lock, or a group is already waiting for it, on the executor thread, which waits
        up to ``BUSY_TIMEOUT_S`` and keeps the order of groups."""
        n = min(len(self._pending), MAX_GROUP)
        if not n:
            self._flushing = False
            return
        batch = [self._pending.popleft() for _ in range(n)]
        ops = [op for op, _ in batch]
        loop = asyncio.get_running_loop()
        try:
            if not self._queued_groups:
                self._connection_ready()
                try:
                    results = self._commit_group(ops, self._inline_connection())
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        self._deliver(batch, exc, [])
                        return
                except BaseException as exc:  # noqa: BLE001 - handed to the callers
                    self._deliver(batch, exc, [])
                    return
                else:
                    self._deliver(batch, None, results)
                    self._committed_at = loop.time()
                    self._commits += 1
                    if self._commits % CHECKPOINT_EVERY == 0:
                        self._executor.submit(self._checkpoint)
                    return
            self._queued_groups += 1
            task = loop.run_in_executor(self._executor, self._commit_group, ops)

            def done(f: asyncio.Future[list[tuple[bool, Any]]]) -> None:
                self._queued_groups -= 1
                exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
                self._deliver(batch, exc, [] if exc else f.result())

            task.add_done_callback(done)
        finally:
            self._schedule_flush(loop)  # whatever arrives meanwhile: the next group

    def _connection_ready(self) -> None:
        if self._conn is None:  # the schema and WAL mode are set up by the executor's connection
            self._executor.submit(self._connection).result()

    def _checkpoint(self) -> None:
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one retries
            log.warning("sqlite checkpoint failed: %s", exc)

    def _deliver(self, batch: list[tuple[Any, asyncio.Future[Any]]],
                 exc: BaseException | None, results: list[tuple[bool, Any]]) -> None:
        deliver(batch, exc, results, self.retry_after_s)

    def _live(self, conn: sqlite3.Connection, session_id: str) -> tuple[Any, ...]:
        row = conn.execute(
            "SELECT created_at, updated_at, language, handoff_reason, state, agent, state_since,"
            " agent_language FROM sessions WHERE id = ?",
            (session_id,),
        ).fetchone()
        if row is None or self._clock() - row[1] > self.ttl_s:
            raise NotFound(f"unknown session {session_id!r}", param="session_id")
        return tuple(row)

    # --- SessionStore -----------------------------------------------------------------

    async def record(self, session_id: str, turns: Sequence[Turn], *, create: bool = False,
                     language: str | None | Keep = KEEP,
                     handoff_reason: str | None = None, guard: Guard | None = None,
                     state: State | None = None, agent: str | None | Keep = KEEP,
                     agent_language: str | None = None) -> int:
        red = self._redactor
        stored = [red.turn(t) if red else t for t in turns]

        def op(conn: sqlite3.Connection) -> int:
            # nothing is written before the session is known to exist (see _commit_group)
            now = self._clock()

            def insert_turns(seq: int) -> int:
                conn.executemany(INSERT_TURN, [turn_row(session_id, seq + i, t)
                                               for i, t in enumerate(stored)])
                return seq + len(stored)

            if create:
                if now - self._swept_at > SWEEP_EVERY_S:
                    self._swept_at = now
                    conn.execute("DELETE FROM sessions WHERE updated_at < ?", (now - self.ttl_s,))
                if guard is not None and not guard.allows(State.BOT.value, None):
                    self._live(conn, session_id)  # a new session would be bot: refuse first
                # this id expired but is not swept yet: it starts over, as in memory and Redis
                conn.execute("DELETE FROM sessions WHERE id = ? AND updated_at < ?",
                             (session_id, now - self.ttl_s))
                new = conn.execute(
                    "INSERT OR IGNORE INTO sessions (id, created_at, updated_at, language,"
                    " handoff_reason, state, agent, agent_language, state_since)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (session_id, now, now, None if language is KEEP else language,
                     handoff_reason or None, State(state or State.BOT).value,
                     None if agent is KEEP else agent, None if agent is KEEP else agent_language,
                     now if state else None))
                if new.rowcount == 1:  # a new session: its turns start at 0, row complete
                    return insert_turns(0)
            row = self._live(conn, session_id)
            if guard is not None:
                guard.check(row[4], row[5])
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq) + 1, 0) FROM turns WHERE session_id = ?", (session_id,)
            ).fetchone()
            count = insert_turns(int(seq))
            sets, values = ["updated_at = ?"], [now]
            if language is not KEEP:
                sets.append("language = ?")
                values.append(language)  # type: ignore[arg-type]
            if handoff_reason:
                sets.append("handoff_reason = ?")
                values.append(handoff_reason)  # type: ignore[arg-type]
            if state is not None:
                sets += ["state = ?", "state_since = ?"]
                values += [State(state).value, now]  # type: ignore[list-item]
            if agent is not KEEP:
                sets += ["agent = ?", "agent_language = ?"]
                values += [agent, agent_language]  # type: ignore[list-item]
            conn.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?",
                         (*values, session_id))
            return count

        return await self._write(op)

    async def transcript(self, session_id: str, last: int | None = None) -> Transcript:
        def op(conn: sqlite3.Connection) -> Transcript:
            created_at, _, language, handoff, state, agent, since, agent_lang = self._live(
                conn, session_id)
            rows = conn.execute(
                f"SELECT {SELECT_TURN} FROM turns"
                " WHERE session_id = ? ORDER BY seq DESC LIMIT ?",
                (session_id, -1 if last is None else last),
            ).fetchall()
            turns = tuple(row_turn(r) for r in reversed(rows))
            return Transcript(session_id, created_at, turns, language, handoff, state, agent,
                              agent_lang, since)

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

    async def waiting(self, limit: int = 100) -> list[tuple[str, float]]:
        since = self._clock() - self.ttl_s  # expired sessions are not waiting
        return await self._read(lambda c: waiting_rows(c, since, limit))

    async def session_ids(self, updated_since: float) -> list[str]:
        since = max(updated_since, self._clock() - self.ttl_s)
        return await self._read(lambda c: ids_since(c, since))

    async def ping(self) -> None:
        await self._run(lambda: self._connection().execute("SELECT 1").fetchone())

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        conn, self._conn = self._conn, None
        try:
            if conn is not None:  # closed on the thread that uses it
                await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        finally:
            self._executor.shutdown(wait=True)
