"""Fixtures of the store tests: a real redis-server per test, and a session store of each
backend (memory, sqlite, Redis) for the tests that must hold on all three."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from babeldesk.config import StoreConfig
from babeldesk.store import SessionStore, open_session_store

from .redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def sessions_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    return request.getfixturevalue("redis_server").url  # type: ignore[no-any-return]


@pytest.fixture
async def store(sessions_url: str) -> AsyncIterator[SessionStore]:
    s = open_session_store(StoreConfig(sessions_url=sessions_url))
    yield s
    await s.close()
