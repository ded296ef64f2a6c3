"""The embedded answer cache: bounded LRU with a TTL per kind; and the factories."""

from __future__ import annotations

from pathlib import Path

import pytest

from babeldesk.config import StoreConfig, load_config
from babeldesk.errors import ConfigError
from babeldesk.store import (
    CacheKind,
    LookupResult,
    kb_answer_key,
    model_answer_key,
    open_answer_cache,
    open_session_store,
)
from babeldesk.store.memory import MemoryAnswerCache, MemorySessionStore
from babeldesk.store.sqlite import SqliteSessionStore
from tests.clock import Clock

TTLS = {CacheKind.KB: 60.0, CacheKind.MODEL: 60.0}


async def test_hit_miss() -> None:
    cache = MemoryAnswerCache(10, TTLS)
    key = kb_answer_key("warranty", "de", "v1")
    assert (await cache.get(key)).result is LookupResult.MISS
    assert await cache.set(key, "Zwei Jahre Garantie.") is True
    lookup = await cache.get(key)
    assert lookup.hit and lookup.value == "Zwei Jahre Garantie." and lookup.kind is CacheKind.KB


async def test_least_recently_used_goes_first() -> None:
    cache = MemoryAnswerCache(3, TTLS)
    keys = [model_answer_key("en", f"question {i}", "v1") for i in range(4)]
    for k in keys[:3]:
        await cache.set(k, k.key)
    assert (await cache.get(keys[0])).hit  # 0 is now the most recent; 1 the least
    await cache.set(keys[3], "new")
    assert len(cache) == 3
    assert not (await cache.get(keys[1])).hit
    assert all([(await cache.get(k)).hit for k in (keys[0], keys[2], keys[3])])


async def test_ttl_per_kind_and_per_entry() -> None:
    clock = Clock()
    cache = MemoryAnswerCache(10, {CacheKind.KB: 60.0, CacheKind.MODEL: 20.0}, clock)
    kb = kb_answer_key("promo_code", "it", "v1")
    model = model_answer_key("it", "avete sconti?", "v1")
    await cache.set(kb, "kb")
    await cache.set(model, "model")
    await cache.set(kb_answer_key("warranty", "it", "v1"), "short", ttl_s=20.0)
    clock.advance(19.0)
    assert (await cache.get(model)).hit
    clock.advance(2.0)
    assert (await cache.get(kb)).hit
    assert not (await cache.get(model)).hit
    assert not (await cache.get(kb_answer_key("warranty", "it", "v1"))).hit
    await cache.clear()
    assert len(cache) == 0


async def test_factories_follow_the_urls(tmp_path: Path) -> None:
    assert isinstance(open_answer_cache(StoreConfig()), MemoryAnswerCache)
    assert isinstance(open_session_store(StoreConfig(sessions_url="memory://")),
                      MemorySessionStore)
    sqlite = open_session_store(StoreConfig(sessions_url=f"sqlite:///{tmp_path}/s.db"))
    assert isinstance(sqlite, SqliteSessionStore)
    await sqlite.close()
    with pytest.raises(ConfigError) as err:
        load_config(env={"BABELDESK_STORE_CACHE_URL": "sqlite:///cache.db"})
    assert err.value.key == "store.cache_url"
    with pytest.raises(ConfigError) as err:
        load_config(env={"BABELDESK_STORE_SESSIONS_URL": "postgres://db/x"})
    assert err.value.key == "store.sessions_url"
    cfg = load_config(env={"BABELDESK_STORE_REDACT": "off",
                           "BABELDESK_STORE_REDACT_PHONE_REGIONS": "FR,JP"})
    assert cfg.store.redact is False and cfg.store.redact_phone_regions == ("FR", "JP")
