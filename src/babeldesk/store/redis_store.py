"""Redis backends (redis-py's asyncio client), shared by every gateway replica.

Keys, under the configured prefix (``babeldesk:``):
- ``cache:<kb|model>:...`` -> the answer, with a TTL per kind
- ``session:{<id>}:meta`` -> hash (created_at, updated_at, language, handoff_reason)
- ``session:{<id>}:turns`` -> list of JSON turns, oldest first
Both session keys carry the id in a hash tag, so they live on one Redis Cluster slot, and
both expire ``session_ttl_s`` after the last write.

A write (``record``: turns, language, handoff, state, agent) is one Lua script (atomic,
like MULTI, and able to refuse an unknown session without a WATCH retry loop): RPUSH, then
refresh the TTLs. Writes from many replicas interleave but none is lost, and writes
awaited in order by one replica keep that order. A repeated call with the same append
token (a retry after a lost reply) is not pushed twice.
With ``appendonly yes`` and ``appendfsync always`` Redis acknowledges a write only after
fsync, so an acknowledged turn survives ``kill -9``.

Failure policy: the cache answers ``LookupResult.ERROR`` and, for ``cache_bypass_s``
seconds, does not touch Redis again (a down Redis costs no connect attempts per message);
the session store raises ``Unavailable`` (503 with Retry-After), never drops a turn.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from babeldesk.errors import NotFound, Unavailable
from babeldesk.store.base import (
    KEEP,
    CacheKey,
    CacheKind,
    CacheLookup,
    Guard,
    Keep,
    LookupResult,
    State,
    Transcript,
    Turn,
)
from babeldesk.store.redact import Redactor

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: meta, turns, waiting queue. ARGV: ttl ms, now (Unix s), create ('1'/'0'), set
# language ('1'/'0'), language ('' clears it), handoff reason ('' = none), append token,
# guard states ('a,b'; '' = no guard), guard agent ('' = any), new state ('' = keep),
# set agent ('1'/'0'), agent ('' clears it), agent language, session id, turn JSON...
# One message or agent action in one script. Returns the list length after, -1 (unknown
# session) or {-2, state, owner} (the guard refused; nothing written).
_RECORD = """
local found = redis.call('EXISTS', KEYS[1]) == 1
if not found and ARGV[3] ~= '1' then return -1 end
if found and redis.call('HGET', KEYS[1], 'last_append') == ARGV[7] then
  return redis.call('LLEN', KEYS[2])
end
if ARGV[8] ~= '' then
  local state = (found and redis.call('HGET', KEYS[1], 'state')) or 'bot'
  local owner = (found and redis.call('HGET', KEYS[1], 'agent')) or ''
  if not string.find(',' .. ARGV[8] .. ',', ',' .. state .. ',', 1, true)
     or (ARGV[9] ~= '' and owner ~= ARGV[9]) then
    return {-2, state, owner}
  end
end
if not found then redis.call('HSET', KEYS[1], 'created_at', ARGV[2], 'state', 'bot') end
if ARGV[4] == '1' then
  if ARGV[5] == '' then redis.call('HDEL', KEYS[1], 'language')
  else redis.call('HSET', KEYS[1], 'language', ARGV[5]) end
end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'handoff_reason', ARGV[6]) end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[10], 'state_since', ARGV[2])
  if ARGV[10] == 'waiting_for_agent' then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[14])
  else redis.call('ZREM', KEYS[3], ARGV[14]) end
end
if ARGV[11] == '1' then
  redis.call('HDEL', KEYS[1], 'agent', 'agent_language')
  if ARGV[12] ~= '' then redis.call('HSET', KEYS[1], 'agent', ARGV[12]) end
  if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'agent_language', ARGV[13]) end
end
local n = redis.call('LLEN', KEYS[2])
for i = 15, #ARGV do n = redis.call('RPUSH', KEYS[2], ARGV[i]) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'last_append', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
if n > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[1]) end
return n
"""


def connect(url: str, timeout_s: float) -> Redis:
    """A client that fails fast: ``timeout_s`` to connect and per command, one immediate
    retry (a pooled connection that died with a Redis restart is replaced once)."""
    return Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), retries=1),
        decode_responses=True,
    )


class RedisAnswerCache:
    def __init__(self, client: Redis, ttls: Mapping[CacheKind, float], prefix: str = "babeldesk:",
                 bypass_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = client
        self._clock = clock  # seconds, monotonic: the bypass window
        self._ttls = dict(ttls)  # seconds per kind
        self._prefix = prefix + "cache:"
        self.bypass_s = bypass_s
        self._down_until = 0.0  # monotonic seconds; Redis is not tried before it

    def _bypassed(self) -> bool:
        return self._clock() < self._down_until

    def _failed(self, op: str, exc: Exception) -> None:
        if not self._bypassed():  # one log line per bypass window, not one per message
            log.warning("answer cache %s failed, bypassing Redis for %.1fs: %s",
                        op, self.bypass_s, exc)
        self._down_until = self._clock() + self.bypass_s

    async def get(self, key: CacheKey) -> CacheLookup:
        if self._bypassed():
            return CacheLookup(key.kind, LookupResult.ERROR)
        try:
            value = await self._redis.get(self._prefix + key.key)
        except (RedisError, OSError) as exc:
            self._failed("get", exc)
            return CacheLookup(key.kind, LookupResult.ERROR)
        if value is None:
            return CacheLookup(key.kind, LookupResult.MISS)
        return CacheLookup(key.kind, LookupResult.HIT, str(value))  # decode_responses=True

    async def set(self, key: CacheKey, value: str, ttl_s: float | None = None) -> bool:
        if self._bypassed():
            return False
        ttl = self._ttls[key.kind] if ttl_s is None else ttl_s
        try:
            await self._redis.set(self._prefix + key.key, value, px=max(1, int(ttl * 1000)))
        except (RedisError, OSError) as exc:
            self._failed("set", exc)
            return False
        return True

    async def clear(self) -> None:
        """Drop every cached answer under this prefix (e.g. after a KB reload)."""
        try:
            async for k in self._redis.scan_iter(match=self._prefix + "*", count=500):
                await self._redis.unlink(k)
        except (RedisError, OSError) as exc:
            self._failed("clear", exc)

    async def close(self) -> None:
        await self._redis.aclose()


class RedisSessionStore:
    def __init__(self, client: Redis, ttl_s: float, redactor: Redactor | None = None,
                 prefix: str = "babeldesk:", retry_after_s: float = 5.0) -> None:
        self._redis = client
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self._redactor = redactor
        self._prefix = prefix + "session:"
        # sorted set: session id -> Unix seconds it started waiting for an agent. One key
        # for the whole queue, so the record script spans two slots: one Redis (or a
        # replica set), not Redis Cluster
        self._waiting = prefix + "waiting"
        self._record = client.register_script(_RECORD)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def _keys(self, session_id: str) -> list[str]:
        base = f"{self._prefix}{{{session_id}}}"
        return [base + ":meta", base + ":turns"]

    async def _call(self, aw: Awaitable[T]) -> T:
        try:
            return await aw
        except (RedisError, OSError) as exc:
            log.warning("session store unavailable: %s", exc)
            raise Unavailable(f"session store unavailable: {exc}",
                              retry_after=self.retry_after_s) from exc

    @staticmethod
    def _unknown(session_id: str) -> NotFound:
        return NotFound(f"unknown session {session_id!r}", param="session_id")

    async def record(self, session_id: str, turns: Sequence[Turn], *, create: bool = False,
                     language: str | None | Keep = KEEP,
                     handoff_reason: str | None = None, guard: Guard | None = None,
                     state: State | None = None, agent: str | None | Keep = KEEP,
                     agent_language: str | None = None) -> int:
        red = self._redactor
        stored = [(red.turn(t) if red else t).to_json() for t in turns]
        token = uuid.uuid4().hex  # the same for the client's retry of this one call
        lang = "" if language is KEEP or language is None else str(language)
        keep = language is KEEP
        n = await self._call(self._record(
            keys=[*self._keys(session_id), self._waiting],
            args=[self._ttl_ms, repr(time.time()), "1" if create else "0", "0" if keep else "1",
                  lang, handoff_reason or "", token,
                  guard.states_csv if guard else "", (guard.agent or "") if guard else "",
                  State(state).value if state else "", "0" if agent is KEEP else "1",
                  "" if agent is KEEP else (agent or ""), agent_language or "", session_id,
                  *stored],
        ))
        if isinstance(n, list):  # the guard refused: {-2, state, owner}
            assert guard is not None
            guard.check(str(n[1]), str(n[2]) or None)
            raise RuntimeError("record script refused a write its guard allows")
        if int(n) < 0:
            raise self._unknown(session_id)
        return int(n)

    async def transcript(self, session_id: str, last: int | None = None) -> Transcript:
        meta, turns = self._keys(session_id)
        pipe = self._redis.pipeline(transaction=True)  # one consistent snapshot
        pipe.hgetall(meta)
        pipe.lrange(turns, 0 if last is None else -last, -1)
        fields, raw = await self._call(pipe.execute())
        if not fields:
            raise self._unknown(session_id)
        return Transcript(
            session_id=session_id,
            created_at=float(fields.get("created_at", 0.0)),
            turns=tuple(Turn.from_json(r) for r in raw) if last != 0 else (),
            language=fields.get("language"),
            handoff_reason=fields.get("handoff_reason"),
            state=fields.get("state", State.BOT.value),
            agent=fields.get("agent"),
            agent_language=fields.get("agent_language"),
            state_since=float(fields["state_since"]) if "state_since" in fields else None,
        )

    async def delete(self, session_id: str) -> None:
        # Redis keeps no copy once the keys are gone, except in the AOF until its next
        # rewrite (BGREWRITEAOF, automatic by size); redaction limits what is there.
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(*self._keys(session_id))
        pipe.zrem(self._waiting, session_id)
        deleted, _ = await self._call(pipe.execute())
        if not deleted:
            raise self._unknown(session_id)

    async def waiting(self, limit: int = 100) -> list[tuple[str, float]]:
        # members whose session expired while waiting are dropped here
        found: list[tuple[str, float]] = []
        start = 0
        while len(found) < limit:
            batch = await self._call(self._redis.zrange(
                self._waiting, start, start + limit - 1, withscores=True))
            if not batch:
                break
            pipe = self._redis.pipeline(transaction=False)
            for sid, _ in batch:
                pipe.exists(self._keys(sid)[0])
            alive = await self._call(pipe.execute())
            stale = [sid for (sid, _), ok in zip(batch, alive) if not ok]
            if stale:
                await self._call(self._redis.zrem(self._waiting, *stale))
            found += [(sid, float(t)) for (sid, t), ok in zip(batch, alive) if ok]
            start += len(batch) - len(stale)
        return found[:limit]

    async def session_ids(self, updated_since: float) -> list[str]:
        """SCAN over the sessions' meta keys (a report, not a request path)."""
        out: list[str] = []
        pattern = self._prefix + "{*}:meta"
        try:
            async for key in self._redis.scan_iter(match=pattern, count=1000):
                updated = await self._redis.hget(key, "updated_at")
                if updated is not None and float(updated) >= updated_since:
                    out.append(str(key)[len(self._prefix) + 1:-len("}:meta")])
        except (RedisError, OSError) as exc:
            raise Unavailable(f"session store unavailable: {exc}",
                              retry_after=self.retry_after_s) from exc
        return out

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
