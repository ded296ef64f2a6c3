"""Rate limits on a real Redis that is killed (-9) and restarted: the limiter's pooled
connections are all stale then; each is retried once on a fresh connection, so the limit
keeps holding instead of failing open for the first request on every connection."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from babeldesk.config import LimitsConfig
from babeldesk.edge.ratelimit import Limiter
from babeldesk.errors import RateLimited
from tests.store.redis_server import RedisServer


def test_limits_hold_right_after_a_redis_restart(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        async def run() -> None:
            limiter = Limiter(LimitsConfig(storage_url=server.url, ip_messages="30/minute"))

            async def burst(ip: str, n: int) -> list[bool]:
                async def one() -> bool:
                    try:
                        await limiter.check("ip_messages", ip, "public")
                        return True
                    except RateLimited:
                        return False
                return list(await asyncio.gather(*[one() for _ in range(n)]))

            assert all(await burst("192.0.2.1", 20))  # fills the pool with connections
            server.restart()  # kill -9, start on the same AOF
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="babeldesk.edge.ratelimit"):
                first = await burst("192.0.2.1", 20)
            assert not [r for r in caplog.records if "not enforced" in r.getMessage()]
            assert first.count(True) == 10  # 20 before the restart survived in the AOF

        asyncio.run(run())
    finally:
        server.kill()
