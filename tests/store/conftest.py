"""Fixtures of the store tests: a real redis-server per test."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.store.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
