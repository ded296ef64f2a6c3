"""In-process backends: the embedded answer cache (bounded LRU with TTL) and a session
store for tests. State lives on the instance; nothing survives the process.

Both are used from one event loop and never await while mutating, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from babeldesk.errors import NotFound
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


class MemoryAnswerCache:
    """At most ``max_entries`` answers; the least recently used goes first when full."""

    def __init__(self, max_entries: int, ttls: Mapping[CacheKind, float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._ttls = dict(ttls)  # seconds per kind
        self._clock = clock  # seconds, monotonic
        # key -> (expires_at: monotonic seconds, value); order: least recently used first
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: CacheKey) -> CacheLookup:
        entry = self._entries.get(key.key)
        if entry is None:
            return CacheLookup(key.kind, LookupResult.MISS)
        expires_at, value = entry
        if expires_at <= self._clock():
            del self._entries[key.key]
            return CacheLookup(key.kind, LookupResult.MISS)
        self._entries.move_to_end(key.key)
        return CacheLookup(key.kind, LookupResult.HIT, value)

    async def set(self, key: CacheKey, value: str, ttl_s: float | None = None) -> bool:
        ttl = self._ttls[key.kind] if ttl_s is None else ttl_s
        self._entries[key.key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key.key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    async def clear(self) -> None:
        self._entries.clear()

    async def close(self) -> None:
        return None


@dataclass
class _Session:
    created_at: float  # Unix seconds
    touched: float  # Unix seconds of the last write
    turns: list[Turn] = field(default_factory=list)
    language: str | None = None
    handoff_reason: str | None = None
    state: str = State.BOT.value
    agent: str | None = None
    agent_language: str | None = None
    state_since: float | None = None  # Unix seconds


class MemorySessionStore:
    """Sessions in a dict; idle ones expire after ``ttl_s``. For tests and one-off runs."""

    def __init__(self, ttl_s: float, redactor: Redactor | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl_s = ttl_s
        self._redactor = redactor
        self._clock = clock  # Unix seconds, as the sqlite and Redis stores keep them
        self._sessions: dict[str, _Session] = {}

    def _get(self, session_id: str) -> _Session:
        s = self._sessions.get(session_id)
        if s is not None and self._clock() - s.touched > self.ttl_s:
            del self._sessions[session_id]
            s = None
        if s is None:
            raise NotFound(f"unknown session {session_id!r}", param="session_id")
        return s

    def _live(self, session_id: str) -> bool:
        try:
            self._get(session_id)
        except NotFound:
            return False
        return True

    async def record(self, session_id: str, turns: Sequence[Turn], *, create: bool = False,
                     language: str | None | Keep = KEEP,
                     handoff_reason: str | None = None, guard: Guard | None = None,
                     state: State | None = None, agent: str | None | Keep = KEEP,
                     agent_language: str | None = None) -> int:
        if create and not self._live(session_id):
            now = self._clock()
            self._sessions[session_id] = _Session(created_at=now, touched=now)
        s = self._get(session_id)
        if guard is not None:
            guard.check(s.state, s.agent)
        if state is not None:
            s.state, s.state_since = State(state).value, self._clock()
        if agent is not KEEP:
            s.agent, s.agent_language = agent, agent_language
        if language is not KEEP:
            s.language = language
        red = self._redactor
        s.turns.extend(red.turn(t) if red else t for t in turns)
        if handoff_reason:
            s.handoff_reason = handoff_reason
        s.touched = self._clock()
        return len(s.turns)

    async def transcript(self, session_id: str, last: int | None = None) -> Transcript:
        s = self._get(session_id)
        turns = s.turns if last is None else s.turns[max(0, len(s.turns) - last):]
        return Transcript(session_id, s.created_at, tuple(turns), s.language, s.handoff_reason,
                          s.state, s.agent, s.agent_language, s.state_since)

    async def session_ids(self, updated_since: float) -> list[str]:
        return [sid for sid in list(self._sessions) if self._live(sid)
                and self._sessions[sid].touched >= updated_since]

    async def waiting(self, limit: int = 100) -> list[tuple[str, float]]:
        found = []
        for sid in list(self._sessions):
            if self._live(sid):
                s = self._sessions[sid]
                if s.state == State.WAITING.value:
                    found.append((sid, s.state_since or s.created_at))
        return sorted(found, key=lambda x: x[1])[:limit]

    async def delete(self, session_id: str) -> None:
        self._get(session_id)
        del self._sessions[session_id]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
