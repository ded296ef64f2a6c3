"""The embedded SQLite session store: restarts, two processes at once, real erasure."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig
from babeldesk.errors import ConfigError
from babeldesk.store import Turn, open_session_store
from babeldesk.store.sqlite import sqlite_path

from . import ops
from .redis_server import release, run_appenders, start_appenders

pytestmark = pytest.mark.slow

WRITE_ONE = """
import asyncio, sys
from babeldesk.config import StoreConfig
from babeldesk.store import Turn, open_session_store

async def main(url):
    store = open_session_store(StoreConfig(sessions_url=url))
    sid = "persisted"
    await store.record(sid, [], create=True)
    await store.record(sid, [], language="it")
    await store.record(sid, [Turn("user", "Dov'è il mio ordine?", language="it")])
    await store.record(sid, [], handoff_reason="asked_for_human")
    await store.close()

asyncio.run(main(sys.argv[1]))
"""


def test_url_to_path() -> None:
    assert sqlite_path("sqlite:///rel/s.db") == Path("rel/s.db")
    assert sqlite_path("sqlite:////abs/s.db") == Path("/abs/s.db")
    assert sqlite_path("sqlite:///~/s.db") == Path.home() / "s.db"
    with pytest.raises(ConfigError):
        open_session_store(StoreConfig(sessions_url="sqlite:///"))


async def test_sessions_survive_a_process_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/data/sessions.db"  # the folder is created
    await asyncio.to_thread(subprocess.run, [sys.executable, "-c", WRITE_ONE, url], check=True,
                            timeout=60)
    store = open_session_store(StoreConfig(sessions_url=url))
    try:
        transcript = await store.transcript("persisted")
        assert [t.text for t in transcript.turns] == ["Dov'è il mio ordine?"]
        assert transcript.language == "it"
        assert transcript.handoff_reason == "asked_for_human"
    finally:
        await store.close()


async def test_two_processes_append_to_one_session(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"
    store = open_session_store(StoreConfig(sessions_url=url))
    try:
        sid = await ops.create(store)
        n = 100
        acked = run_appenders(url, sid, ["a", "b"], n, tmp_path)
        assert acked == [list(range(n)), list(range(n))]
        texts = [t.text for t in (await store.transcript(sid)).turns]
        assert len(texts) == 2 * n
        for writer in ("a", "b"):
            assert [t for t in texts if t.startswith(writer)] == [f"{writer}-{i}" for i in range(n)]
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "sessions.db") as db:
        seqs = [r[0] for r in db.execute("SELECT seq FROM turns WHERE session_id = ?", (sid,))]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert sorted(seqs) == list(range(2 * n))  # numbered without gaps or duplicates


async def test_delete_leaves_no_trace_in_the_files(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    store = open_session_store(StoreConfig(sessions_url=f"sqlite:///{db}", redact=False))
    secret = "Mein Geheimnis: Bestellung für Frau Schmidt-Ößterberg"
    try:
        keep = await ops.create(store)
        await ops.append(store, keep, Turn("user", "keep this one"))
        gone = await ops.create(store)
        await ops.append(store, gone, Turn("user", secret))
        await store.delete(gone)
    finally:
        await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("sessions.db"))
    assert secret.encode() not in raw
    assert b"keep this one" in raw


async def test_kill_9_of_a_writer_loses_no_acknowledged_turn(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sessions.db"
    store = open_session_store(StoreConfig(sessions_url=url))
    try:
        sid = await ops.create(store)
        go = tmp_path / "go"
        (proc,) = start_appenders(url, sid, ["a"], 100_000, go)
        try:
            release(go, ["a"])
            deadline = time.monotonic() + 30
            while len((await store.transcript(sid)).turns) < 100:
                assert time.monotonic() < deadline, "appender made no progress"
                await asyncio.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)  # mid-transaction, no clean shutdown
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        acked = [int(x) for x in out.split()]
        stored = [int(t.text.split("-")[1]) for t in (await store.transcript(sid)).turns]
        assert len(acked) >= 99  # 100 were stored; the last may be killed before it printed
        assert stored[: len(acked)] == acked
        assert len(stored) - len(acked) in (0, 1)  # at most the one committed, not yet printed
    finally:
        await store.close()


async def test_records_arriving_steadily_share_a_commit(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """After a commit, records that arrive in the next loop iterations wait
    GROUP_LINGER_S and go out in one commit; after a quiet spell a record is committed at
    once. Every record is answered only once committed (read back by a second store).
    The linger is stretched to 50 ms; the test counts commits and loop iterations, not
    time."""
    from babeldesk.store import sqlite as sqlite_store

    linger = 0.05
    monkeypatch.setattr(sqlite_store, "GROUP_LINGER_S", linger)
    path = tmp_path / "s.db"
    store = sqlite_store.SqliteSessionStore(path, ttl_s=3600)
    turn = [Turn("user", "hola", language="es")]
    await store.record("first", turn, create=True)
    assert store._commits == 1

    async def one(sid: str, iterations: int) -> None:
        for _ in range(iterations):  # each record in its own loop iteration
            await asyncio.sleep(0)
        await store.record(sid, turn, create=True)

    ids = [f"steady-{i}" for i in range(4)]
    await asyncio.gather(*(one(sid, 2 * i) for i, sid in enumerate(ids)))
    assert store._commits == 2  # one group that waited for company, not four commits

    await asyncio.sleep(linger * 2)  # quiet: the next record does not wait
    quiet = asyncio.create_task(store.record("after-quiet", turn, create=True))
    for _ in range(4):  # committed within the next loop iterations (the linger would hold
        await asyncio.sleep(0)  # it back a timer's 50 ms)
    assert quiet.done() and store._commits == 3
    await quiet

    other = sqlite_store.SqliteSessionStore(path, ttl_s=3600)
    for sid in ["first", *ids, "after-quiet"]:
        assert [t.text for t in (await other.transcript(sid)).turns] == ["hola"]
    await other.close()
    await store.close()
