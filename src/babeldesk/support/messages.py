"""What one customer message is and what it gets back: ``SupportRequest``, ``SupportReply``
(DESIGN's support API fields), the ``Source`` of an answer, ``validate_message``, and the
pipeline's ``Outcome`` with the answer cache's record of it (``cached_value`` /
``cached_outcome``)."""

from __future__ import annotations

import enum
import functools
import json
import unicodedata
from dataclasses import dataclass, fields

from babeldesk.errors import InvalidRequest, PayloadTooLarge
from babeldesk.store import State
from babeldesk.support.handoff import HandoffReason


class Source(str, enum.Enum):
    KNOWLEDGE_BASE = "knowledge_base"
    CACHE = "cache"
    MODEL = "model"
    DOCUMENT = "document"  # the model, from help-center passages (reply.sources)
    HANDOFF = "handoff"
    AGENT = "agent"  # the conversation is an agent's: stored and delivered, no assistant reply


@dataclass(frozen=True, slots=True)
class SupportRequest:
    message: str
    session_id: str | None = None
    language: str | None = None  # explicit: wins over detection
    locale: str | None = None  # the chat page's locale / Accept-Language: a hint, never checked


@dataclass(frozen=True, slots=True)
class SupportReply:
    session_id: str
    reply: str
    language: str
    source: str  # Source value
    intent: str | None
    confidence: float
    handoff: dict[str, str] | None
    latency_ms: float
    translated: bool = False  # the KB answer was translated into `language` by the model
    # the help-center passages a document answer was grounded in: ({title, url}, ...)
    sources: tuple[dict[str, str], ...] = ()
    state: str = State.BOT.value  # the conversation's state after this message

    def to_dict(self) -> dict[str, object]:
        # not dataclasses.asdict: that deep-copies every value recursively and was ~5% of
        # the CPU time of an answer from the cache
        out = {name: getattr(self, name) for name in _REPLY_FIELDS}
        if self.handoff is not None:
            out["handoff"] = dict(self.handoff)
        out["sources"] = [dict(s) for s in self.sources]
        return out


_REPLY_FIELDS = tuple(f.name for f in fields(SupportReply))
Event = str | SupportReply  # text deltas, then the final reply


def validate_message(text: object, max_chars: int) -> str:
    if not isinstance(text, str):
        raise InvalidRequest("message must be a string", param="message")
    if len(text) > max_chars:
        raise PayloadTooLarge(f"message is {len(text)} characters; the limit is {max_chars}")
    if not text.strip():
        raise InvalidRequest("message is empty", param="message")
    junk = 0 if text.isprintable() else sum(  # isprintable: C speed for the common case
        1 for ch in text if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn")
        and ch not in "\n\r\t")
    if junk and junk / len(text) > 0.1 or "\x00" in text:
        raise InvalidRequest("message contains binary data, not text", param="message")
    return text.strip()


def cached_value(reply: str, intent: str | None, confidence: float, translated: bool,
                  sources: tuple[dict[str, str], ...] = ()) -> str:
    data: dict[str, object] = {"reply": reply, "intent": intent,
                               "confidence": round(confidence, 4), "translated": translated}
    if sources:
        data["sources"] = list(sources)
    return json.dumps(data, ensure_ascii=False)


@functools.lru_cache(maxsize=1024)  # the same cached answers come back again and again
def cached_outcome(value: str) -> Outcome | None:
    try:
        data = json.loads(value)
        sources = tuple({"title": str(s["title"]), "url": str(s["url"])}
                        for s in data.get("sources", ()))
        return Outcome(str(data["reply"]), Source.CACHE, data.get("intent"),
                        float(data.get("confidence", 0.0)), None,
                        translated=bool(data.get("translated")), cacheable=False,
                        sources=sources)
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)  # shared: cached_outcome hands out one per value
class Outcome:
    reply: str
    source: Source
    intent: str | None
    confidence: float
    handoff: HandoffReason | None
    translated: bool = False
    cacheable: bool = True  # may be stored under the message's text key
    sources: tuple[dict[str, str], ...] = ()  # document answers: the passages' {title, url}
