"""Resolution numbers: a generated day of conversations written into real session stores
(sqlite through the `babeldesk report` command, Redis through `collect`), checked against
numbers computed by hand."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig
from babeldesk.store import SessionStore, Turn, open_session_store
from babeldesk.store.base import State
from babeldesk.support.resolution import Outcome, classify, collect, summarize
from tests.conftest import BIN
from tests.store import ops

D = 1_764_720_000.0  # the day's start, Unix seconds
H = 3600.0

# (session, language, [(hour, role, source)], handoff) -- "rating:up" is a rating turn
DAY = [
    ("es-confirmed", "es", [(1, "user", None), (1, "assistant", "knowledge_base"),
                            (1.2, "system", "rating:up")], False),
    ("es-assumed", "es", [(2, "user", None), (2, "assistant", "model"), (3, "user", None),
                          (3, "assistant", "cache")], False),
    ("es-handoff", "es", [(4, "user", None), (4, "assistant", "knowledge_base"),
                          (5, "user", None), (5, "assistant", "handoff")], True),
    ("es-open", "es", [(6, "user", None), (6, "assistant", "knowledge_base"), (30, "user", None),
                       (30, "assistant", "knowledge_base")], False),
    ("en-assumed", "en", [(1, "user", None), (1, "assistant", "document")], False),
    ("en-down", "en", [(2, "user", None), (2, "assistant", "model"),
                       (2.1, "system", "rating:down")], False),
    ("en-handoff-only", "en", [(3, "user", None), (3, "assistant", "handoff")], True),
    ("en-down-then-up", "en", [(4, "user", None), (4, "assistant", "knowledge_base"),
                               (4.1, "system", "rating:down"), (4.2, "system", "rating:up")],
     False),
    ("de-assumed", "de", [(10, "user", None), (10, "assistant", "knowledge_base")], False),
    ("de-before", "de", [(-2, "user", None), (-2, "assistant", "knowledge_base")], False),
    ("de-after", "de", [(25, "user", None), (25, "assistant", "knowledge_base")], False),
]
# computed by hand from DAY, evaluated 48 h after the day's start with a 24 h window
EXPECTED = {
    "en": dict(conversations=4, involved=3, handed_off=1, confirmed=1, assumed=1, open=0,
               involvement_rate=0.75, handoff_rate=0.25, confirmed_rate=0.3333,
               assumed_rate=0.3333, automation_rate=0.5),
    "es": dict(conversations=4, involved=4, handed_off=1, confirmed=1, assumed=1, open=1,
               involvement_rate=1.0, handoff_rate=0.25, confirmed_rate=0.25,
               assumed_rate=0.25, automation_rate=0.5),
    "de": dict(conversations=1, involved=1, handed_off=0, confirmed=0, assumed=1, open=0,
               involvement_rate=1.0, handoff_rate=0.0, confirmed_rate=0.0,
               assumed_rate=1.0, automation_rate=1.0),
    "all": dict(conversations=9, involved=8, handed_off=2, confirmed=2, assumed=3, open=1,
                involvement_rate=0.8889, handoff_rate=0.2222, confirmed_rate=0.25,
                assumed_rate=0.375, automation_rate=0.5556),
}


async def write_day(store: SessionStore) -> None:
    for sid, lang, turns, handoff in DAY:
        stored = []
        for hour, role, source in turns:
            at = D + hour * H
            if source and source.startswith("rating:"):
                stored.append(Turn("system", source.split(":")[1], language=lang,
                                   source="rating", time=at))
            else:
                stored.append(Turn(role, "…", language=lang, source=source, time=at,
                                   intent="order_status" if role == "assistant" else None))
        await store.record(sid, stored, create=True, language=lang,
                           handoff_reason="customer_request" if handoff else None,
                           state=State.WAITING if handoff else None)
    await ops.create(store, "nobody-wrote")


def rows_by_language(rows: list[dict]) -> dict[str, dict]:
    return {r["language"]: {k: v for k, v in r.items() if k != "language"} for r in rows}


def test_report_command_over_a_day_in_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"

    async def fill() -> None:
        store = open_session_store(StoreConfig(sessions_url=url))
        await write_day(store)
        await store.close()

    asyncio.run(fill())
    out = subprocess.run(
        [str(BIN), "report", "--sessions", url, "--since", str(D), "--until", str(D + 24 * H),
         "--at", str(D + 48 * H), "--window", "24h", "--json", str(tmp_path / "r.json"),
         "--png", str(tmp_path / "r.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["language"] for r in data["rows"]] == ["en", "es", "de", "all"]
    assert rows_by_language(data["rows"]) == EXPECTED
    assert "es" in out.stdout and "50.0%" in out.stdout and "automation" in out.stdout
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # a shorter window: the Spanish conversation still open at 48 h is resolved at 6 h too
    short = subprocess.run(
        [str(BIN), "report", "--sessions", url, "--since", str(D), "--until", str(D + 24 * H),
         "--at", str(D + 48 * H), "--window", "6h", "--json", str(tmp_path / "s.json")],
        capture_output=True, text=True, timeout=120)
    assert short.returncode == 0, short.stderr
    es = rows_by_language(json.loads((tmp_path / "s.json").read_text())["rows"])["es"]
    assert (es["assumed"], es["open"]) == (2, 0)
    bad = subprocess.run([str(BIN), "report", "--sessions", url, "--since", "yesterday"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr


def test_the_same_day_in_redis(redis_server) -> None:
    async def run() -> list[dict]:
        store = open_session_store(StoreConfig(sessions_url=redis_server.url))
        try:
            await write_day(store)
            found = await collect(store, D, D + 24 * H, D + 48 * H, 24 * H)
            return [r.to_dict() for r in summarize(found)]
        finally:
            await store.close()

    assert rows_by_language(asyncio.run(run())) == EXPECTED


def test_each_outcome() -> None:
    from babeldesk.store import Transcript

    def t(*turns: Turn, handoff: str | None = None) -> Transcript:
        return Transcript("s", D, turns, "es", handoff)

    u, a = Turn("user", "q", time=D), Turn("assistant", "a", source="model", time=D + 1)
    assert classify(t(u, a), D + 2 * H, H).outcome is Outcome.RESOLVED_ASSUMED
    assert classify(t(u, a), D + 0.5 * H, H).outcome is Outcome.OPEN
    assert classify(t(u), D + 2 * H, H).outcome is Outcome.ABANDONED
    assert classify(t(u, a, handoff="low_confidence"), D, H).outcome is Outcome.HANDED_OFF
    assert classify(t(), D, H) is None


@pytest.fixture
def redis_server(tmp_path: Path):
    from tests.store.redis_server import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()
