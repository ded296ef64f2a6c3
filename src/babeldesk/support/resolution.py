"""Resolution numbers: what happened to each conversation, and the rates per language.

Per conversation (a session whose first customer message falls in the range):
- involvement: the assistant answered at least once (knowledge base, cache, document or
  model; a handoff message is not an answer);
- handoff: it was handed to a human;
- confirmed resolution: the customer's last rating is thumbs up, and no handoff;
- assumed resolution: the assistant answered, no handoff, no rating down, and the
  customer sent nothing within ``window_s`` after its last answer (Intercom's definition
  with a configurable window, default 24 h);
- open: still inside that window (neither resolved nor not; counted apart).

Rates: involvement and handoff per conversation; resolution (confirmed, assumed) per
involved conversation; automation = resolved / all conversations.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from babeldesk.errors import NotFound
from babeldesk.store import SessionStore, Transcript

ANSWER_SOURCES = frozenset({"knowledge_base", "cache", "document", "model"})
RATING_SOURCE = "rating"  # a rating is stored as a system turn with this source
DEFAULT_WINDOW_S = 24 * 3600.0


class Rating(str, enum.Enum):
    UP = "up"
    DOWN = "down"


class Outcome(str, enum.Enum):
    """The ``outcome`` label of ``conversations_total`` (DESIGN.md), plus the undecided."""

    RESOLVED_CONFIRMED = "resolved_confirmed"
    RESOLVED_ASSUMED = "resolved_assumed"
    HANDED_OFF = "handed_off"
    ABANDONED = "abandoned"  # the assistant never answered, or the answer was rated down
    OPEN = "open"  # inside the window: not decided yet


@dataclass(frozen=True, slots=True)
class Conversation:
    session_id: str
    language: str
    intent: str | None  # the first intent the assistant recognised
    started: float  # Unix seconds of the first customer message
    involved: bool
    handed_off: bool
    rating: str | None  # the last rating, up | down
    outcome: Outcome


def classify(t: Transcript, now: float, window_s: float = DEFAULT_WINDOW_S
             ) -> Conversation | None:
    """One conversation's numbers; None when the customer never wrote."""
    users = [x for x in t.turns if x.role == "user"]
    if not users:
        return None
    answers = [x for x in t.turns if x.role == "assistant" and x.source in ANSWER_SOURCES]
    handed_off = bool(t.handoff_reason) or any(
        x.role == "assistant" and x.source == "handoff" for x in t.turns)
    ratings = [x.text for x in t.turns if x.role == "system" and x.source == RATING_SOURCE]
    rating = ratings[-1] if ratings else None
    language = ((t.language or "").partition(">")[0] or users[0].language or "und")
    intent = next((x.intent for x in t.turns if x.intent), None)
    involved = bool(answers)
    if handed_off:
        outcome = Outcome.HANDED_OFF
    elif rating == Rating.UP.value:
        outcome = Outcome.RESOLVED_CONFIRMED
    elif not involved or rating == Rating.DOWN.value:
        outcome = Outcome.ABANDONED
    elif users[-1].time > answers[-1].time:  # the customer wrote after the last answer
        outcome = (Outcome.OPEN if now - users[-1].time < window_s else Outcome.ABANDONED)
    elif now - answers[-1].time < window_s:
        outcome = Outcome.OPEN
    else:
        outcome = Outcome.RESOLVED_ASSUMED
    return Conversation(t.session_id, language, intent, users[0].time, involved, handed_off,
                        rating, outcome)


@dataclass(frozen=True, slots=True)
class Row:
    language: str  # a code, or "all"
    conversations: int
    involved: int
    handed_off: int
    confirmed: int
    assumed: int
    open: int

    @staticmethod
    def _share(n: int, of: int) -> float | None:
        return round(n / of, 4) if of else None

    @property
    def involvement_rate(self) -> float | None:
        return self._share(self.involved, self.conversations)

    @property
    def handoff_rate(self) -> float | None:
        return self._share(self.handed_off, self.conversations)

    @property
    def confirmed_rate(self) -> float | None:  # of involved conversations
        return self._share(self.confirmed, self.involved)

    @property
    def assumed_rate(self) -> float | None:  # of involved conversations
        return self._share(self.assumed, self.involved)

    @property
    def automation_rate(self) -> float | None:  # resolved of all conversations
        return self._share(self.confirmed + self.assumed, self.conversations)

    def to_dict(self) -> dict[str, object]:
        return {"language": self.language, "conversations": self.conversations,
                "involved": self.involved, "handed_off": self.handed_off,
                "confirmed": self.confirmed, "assumed": self.assumed, "open": self.open,
                "involvement_rate": self.involvement_rate, "handoff_rate": self.handoff_rate,
                "confirmed_rate": self.confirmed_rate, "assumed_rate": self.assumed_rate,
                "automation_rate": self.automation_rate}


def _row(language: str, cs: Sequence[Conversation]) -> Row:
    return Row(language, len(cs), sum(c.involved for c in cs), sum(c.handed_off for c in cs),
               sum(c.outcome is Outcome.RESOLVED_CONFIRMED for c in cs),
               sum(c.outcome is Outcome.RESOLVED_ASSUMED for c in cs),
               sum(c.outcome is Outcome.OPEN for c in cs))


def summarize(conversations: Iterable[Conversation]) -> list[Row]:
    """One row per language (most conversations first, then by code), then ``all``."""
    cs = list(conversations)
    by: dict[str, list[Conversation]] = {}
    for c in cs:
        by.setdefault(c.language, []).append(c)
    rows = [_row(lang, by[lang]) for lang in sorted(by, key=lambda k: (-len(by[k]), k))]
    return [*rows, _row("all", cs)]


async def collect(store: SessionStore, since: float, until: float, now: float,
                  window_s: float = DEFAULT_WINDOW_S) -> list[Conversation]:
    """The conversations of the session store that started in [since, until)."""
    out = []
    for sid in await store.session_ids(since):
        try:
            t = await store.transcript(sid)
        except NotFound:  # erased or expired meanwhile
            continue
        c = classify(t, now, window_s)
        if c is not None and since <= c.started < until:
            out.append(c)
    return sorted(out, key=lambda c: c.started)
