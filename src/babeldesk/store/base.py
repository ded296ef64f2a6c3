"""What the stores hold and the two small Protocols every backend satisfies.

``AnswerCache`` never raises to its caller: a broken backend answers a miss with
``result == LookupResult.ERROR`` so the caller can count it in
``cache_lookups_total{kind,result}`` and go on without the cache.
``SessionStore`` never loses a turn silently: a broken backend raises ``Unavailable``
(503 with Retry-After), an unknown session raises ``NotFound`` (404).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from babeldesk.errors import ConfigError, Conflict, InvalidRequest

# who said it: the customer, the assistant, a human agent after handoff, or a system note
TURN_ROLES: tuple[str, ...] = ("user", "assistant", "agent", "system")


class Scheme(str, enum.Enum):
    MEMORY = "memory"
    SQLITE = "sqlite"
    REDIS = "redis"
    REDISS = "rediss"  # Redis over TLS


def scheme_of(key: str, url: str) -> Scheme:
    """The backend a store URL names; ``key`` is the config key, named in the error."""
    try:
        return Scheme(urlsplit(url).scheme)
    except ValueError:
        raise ConfigError(key, f"unknown store URL {url!r}") from None


class Keep(enum.Enum):
    """``SessionStore.record(language=KEEP)``: leave the session's language lock as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


class State(str, enum.Enum):
    """A conversation's state. ``bot``: the assistant answers; ``waiting_for_agent``: handed
    off, in the agents' queue, the assistant is silent; ``with_agent``: an agent owns it;
    ``closed``: done (a later customer message reopens it with the assistant)."""

    BOT = "bot"
    WAITING = "waiting_for_agent"
    WITH_AGENT = "with_agent"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Guard:
    """A write that happens only while the conversation is in one of ``states`` and, when
    ``agent`` is set, owned by that agent; otherwise nothing is written and the store
    raises ``Conflict`` with the state and owner it found. Checked inside the backend's
    atomic write, so two agents claiming at once cannot both win."""

    states: frozenset[State]
    agent: str | None = None

    @classmethod
    def of(cls, *states: State, agent: str | None = None) -> Guard:
        return cls(frozenset(states), agent)

    def allows(self, state: str, owner: str | None) -> bool:
        return State(state) in self.states and (self.agent is None or owner == self.agent)

    def check(self, state: str, owner: str | None) -> None:
        if not self.allows(state, owner):
            raise Conflict(f"the conversation is {state}"
                           + (f" with agent {owner}" if owner and state == State.WITH_AGENT
                              else ""), state=state, owner=owner)

    @property
    def states_csv(self) -> str:  # for the Redis script
        return ",".join(sorted(s.value for s in self.states))


class CacheKind(str, enum.Enum):
    """The ``kind`` label of ``cache_lookups_total``; also the key namespace."""

    KB = "kb"  # knowledge-base answer per (intent, language, KB version)
    MODEL = "model"  # model answer per (language, normalised text, KB version)
    # model answer from help-center passages per (language, normalised text, shop prompt,
    # the passages' chunk hashes): editing an article section invalidates exactly these
    DOCUMENT = "document"


class LookupResult(str, enum.Enum):
    """The ``result`` label of ``cache_lookups_total``."""

    HIT = "hit"
    MISS = "miss"
    ERROR = "error"  # backend unreachable: treated as a miss, counted apart


@dataclass(frozen=True, slots=True)
class CacheKey:
    kind: CacheKind
    key: str  # namespaced by kind, without the backend's own prefix


@dataclass(frozen=True, slots=True)
class CacheLookup:
    kind: CacheKind
    result: LookupResult
    value: str | None = None  # set iff result is HIT

    @property
    def hit(self) -> bool:
        return self.result is LookupResult.HIT


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation as stored. ``time`` is Unix seconds (wall clock)."""

    role: str  # one of TURN_ROLES
    text: str
    language: str | None = None  # ISO 639-1 code the turn was written / answered in
    source: str | None = None  # assistant turns: knowledge_base | cache | model | handoff
    intent: str | None = None
    confidence: float | None = None  # 0..1, of the matched intent
    time: float = field(default_factory=time.time)
    agent: str | None = None  # agent turns: who wrote it (the operator key's name)
    # the other version of ``text`` (which is the turn as written): a customer message
    # translated for the agent, an agent reply translated for the customer
    translation: str | None = None
    translation_language: str | None = None
    untranslated: bool = False  # an agent reply the model could not translate, sent as written

    def __post_init__(self) -> None:
        if self.role not in TURN_ROLES:
            raise InvalidRequest(f"role must be one of {', '.join(TURN_ROLES)}", param="role")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True, slots=True)
class Transcript:
    session_id: str
    created_at: float  # Unix seconds
    turns: tuple[Turn, ...]  # oldest first; the last ``n`` when asked for fewer
    language: str | None = None  # the session's language lock, if set
    handoff_reason: str | None = None  # set once the session is handed to a human
    state: str = State.BOT.value
    agent: str | None = None  # the agent who owns it (with_agent), or last owned it
    agent_language: str | None = None  # the language that agent reads and writes
    state_since: float | None = None  # Unix seconds of the last state change

    @property
    def handed_off(self) -> bool:
        return self.handoff_reason is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of ``GET /v1/support/sessions/{id}``."""
        return {
            "session_id": self.session_id,
            "created_at": self.created_at,
            "language": self.language,
            "handoff": {"reason": self.handoff_reason} if self.handed_off else None,
            "state": self.state,
            "agent": self.agent,
            "turns": [asdict(t) for t in self.turns],
        }


class AnswerCache(Protocol):
    """Answers by key with a TTL per kind. Never raises for backend failures."""

    async def get(self, key: CacheKey) -> CacheLookup: ...

    async def set(self, key: CacheKey, value: str, ttl_s: float | None = None) -> bool:
        """Store ``value``; ``ttl_s`` None takes the kind's TTL. False: the backend was
        unreachable and the write was skipped (logged)."""
        ...

    async def clear(self) -> None: ...

    async def close(self) -> None: ...


class SessionStore(Protocol):
    """Conversations. Raises ``NotFound`` for an unknown session and ``Unavailable``
    when the backend cannot be reached; an acknowledged append is durable."""

    async def record(self, session_id: str, turns: Sequence[Turn], *, create: bool = False,
                     language: str | None | Keep = KEEP,
                     handoff_reason: str | None = None, guard: Guard | None = None,
                     state: State | None = None, agent: str | None | Keep = KEEP,
                     agent_language: str | None = None) -> int:
        """Everything one message or one agent action changes, as one atomic write: create
        the session (``create``; an existing id is kept as is), check ``guard`` (``Conflict``
        and nothing written when it fails), set its language lock (unless ``KEEP``), append
        ``turns`` in order, mark the handoff (when a reason is given), move it to ``state``
        (``state_since`` = now) and set its ``agent`` and ``agent_language`` (unless ``agent``
        is ``KEEP``). Returns the number
        of turns after it; ``NotFound`` when the session does not exist and ``create`` is
        false."""
        ...

    async def waiting(self, limit: int = 100) -> list[tuple[str, float]]:
        """Conversations in ``waiting_for_agent``, longest waiting first: (id, since)."""
        ...

    async def session_ids(self, updated_since: float) -> list[str]:
        """Every live session written at or after ``updated_since`` (Unix seconds), for
        reports; no order."""
        ...

    async def transcript(self, session_id: str, last: int | None = None) -> Transcript: ...

    async def delete(self, session_id: str) -> None:
        """Erase the session and its turns everywhere this backend keeps them."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless the backend answers now (for /ready)."""
        ...

    async def close(self) -> None: ...
