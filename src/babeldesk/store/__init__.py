"""Answer cache and session store behind small Protocols, chosen by URL:
``memory://``, ``sqlite:///path/to.db`` (sessions only), ``redis://host:6379/0``."""

from __future__ import annotations

import time
from collections.abc import Callable

from babeldesk.config import StoreConfig
from babeldesk.errors import ConfigError
from babeldesk.store.base import (
    KEEP,
    AnswerCache,
    CacheKey,
    CacheKind,
    CacheLookup,
    Guard,
    Keep,
    LookupResult,
    Scheme,
    SessionStore,
    State,
    Transcript,
    Turn,
    scheme_of,
)
from babeldesk.store.events import EventBus, MemoryEventBus
from babeldesk.store.keys import (
    document_answer_key,
    kb_answer_key,
    model_answer_key,
    new_session_id,
    normalise_text,
)
from babeldesk.store.redact import Redactor

__all__ = [
    "KEEP",
    "AnswerCache",
    "CacheKey",
    "CacheKind",
    "CacheLookup",
    "EventBus",
    "Guard",
    "Keep",
    "LookupResult",
    "Redactor",
    "SessionStore",
    "State",
    "Transcript",
    "Turn",
    "document_answer_key",
    "kb_answer_key",
    "model_answer_key",
    "new_session_id",
    "normalise_text",
    "open_answer_cache",
    "open_event_bus",
    "open_session_store",
]


def _ttls(config: StoreConfig) -> dict[CacheKind, float]:
    return {CacheKind.KB: config.cache_kb_ttl_s, CacheKind.MODEL: config.cache_model_ttl_s,
            CacheKind.DOCUMENT: config.cache_model_ttl_s}


def open_answer_cache(config: StoreConfig,
                      clock: Callable[[], float] = time.monotonic) -> AnswerCache:
    """The cache ``store.cache_url`` names. Connects lazily: a down Redis is not an error
    here, only a bypassed cache later. ``clock`` (seconds, monotonic) times the in-process
    TTLs and Redis's bypass window; Redis expires its keys on its own clock."""
    scheme = scheme_of("store.cache_url", config.cache_url)
    if scheme is Scheme.MEMORY:
        from babeldesk.store.memory import MemoryAnswerCache

        return MemoryAnswerCache(config.cache_max_entries, _ttls(config), clock)
    if scheme in (Scheme.REDIS, Scheme.REDISS):
        from babeldesk.store.redis_store import RedisAnswerCache, connect

        client = connect(config.cache_url, config.redis_timeout_s)
        return RedisAnswerCache(client, _ttls(config), config.redis_prefix, config.cache_bypass_s,
                                clock)
    raise ConfigError("store.cache_url", f"{scheme.value}:// is not a cache backend")


def open_session_store(config: StoreConfig,
                       clock: Callable[[], float] = time.time) -> SessionStore:
    """The session store ``store.sessions_url`` names, redacting turns when
    ``store.redact`` is on. ``clock`` (Unix seconds) stamps and expires sessions in memory
    and sqlite; Redis expires its keys on its own clock."""
    redactor = Redactor(config.redact_phone_regions) if config.redact else None
    scheme = scheme_of("store.sessions_url", config.sessions_url)
    if scheme is Scheme.MEMORY:
        from babeldesk.store.memory import MemorySessionStore

        return MemorySessionStore(config.session_ttl_s, redactor, clock)
    if scheme is Scheme.SQLITE:
        from babeldesk.store.sqlite import SqliteSessionStore, sqlite_path

        try:
            path = sqlite_path(config.sessions_url)
        except ValueError as exc:
            raise ConfigError("store.sessions_url", str(exc)) from None
        return SqliteSessionStore(path, config.session_ttl_s, redactor, config.retry_after_s,
                                  config.sqlite_fsync, clock)
    from babeldesk.store.redis_store import RedisSessionStore, connect

    client = connect(config.sessions_url, config.redis_timeout_s)
    return RedisSessionStore(client, config.session_ttl_s, redactor, config.redis_prefix,
                             config.retry_after_s)


def open_event_bus(config: StoreConfig) -> EventBus:
    """Live events: through Redis pub/sub when sessions are in Redis (every gateway on it
    sees them), else within this process."""
    scheme = scheme_of("store.sessions_url", config.sessions_url)
    if scheme in (Scheme.REDIS, Scheme.REDISS):
        from babeldesk.store.events import RedisEventBus, connect_pubsub

        return RedisEventBus(connect_pubsub(config.sessions_url, config.redis_timeout_s),
                             config.redis_prefix)
    return MemoryEventBus()
