"""Human agents in the conversation: the queue of conversations waiting for one, claim,
reply, close, return to the assistant; the customer's messages delivered to the owner,
translated into the agent's language; the agent's replies translated into the customer's.

Every move is one guarded store write (``store.Guard``): two agents claiming at once,
a reply racing a close, a reply by an agent who does not own the conversation -- the
store refuses all but one and nothing half-written remains. Refusals map to HTTP:
not claimed / closed / back with the assistant -> 409; owned by another agent -> 403.

Live delivery: each change is published on ``session:<id>`` (the customer's page and
the agent's view) and queue changes on ``agents`` (every console); see store/events.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

from babeldesk.errors import BabeldeskError, Conflict, Forbidden, InvalidRequest
from babeldesk.store import (
    KEEP,
    AnswerCache,
    CacheKey,
    CacheKind,
    EventBus,
    Guard,
    Keep,
    SessionStore,
    State,
    Transcript,
    Turn,
)
from babeldesk.support.handoff import WebhookNotifier, conversation_event
from babeldesk.support.language import LanguageDetector
from babeldesk.support.prompt import relay_prompt
from babeldesk.support.resolution import RATING_SOURCE, Outcome, Rating
from babeldesk.telemetry.metrics import Metrics
from babeldesk.types import ChatModel, ChatRequest, SamplingParams, generated_text

log = logging.getLogger(__name__)
AGENTS_CHANNEL = "agents"
TRANSLATION_TTL_S = 7 * 86400.0  # cached translations of turns, seconds
QUEUE_LIMIT = 1000  # conversations listed (and counted) at most
_DIGITS = re.compile(r"\d+")


def session_channel(session_id: str) -> str:
    return f"session:{session_id}"


def customer_language(t: Transcript) -> str | None:
    """The language the customer is answered in: the session's lock, else their last turn's."""
    locked = (t.language or "").partition(">")[0]
    if locked:
        return locked
    return next((x.language for x in reversed(t.turns) if x.role == "user" and x.language), None)


class Translator:
    """Agent <-> customer translation by the model (the bundled one by default), cached in
    the answer cache. ``None`` means: not translated -- no model, the model failed, or what
    it wrote is not a translation (empty, the text itself, still in the source language,
    or far longer than the text)."""

    def __init__(self, model: ChatModel | None, cache: AnswerCache, detector: LanguageDetector,
                 max_tokens: int = 256) -> None:
        self.model, self.cache, self.detector = model, cache, detector
        self.max_tokens = max_tokens

    async def translate(self, text: str, source: str | None, target: str) -> str | None:
        if self.model is None or not text.strip() or source == target:
            return None
        digest = hashlib.sha256(f"{source}\x00{target}\x00{text}".encode()).hexdigest()
        key = CacheKey(CacheKind.MODEL, f"translation:{digest}")
        found = await self.cache.get(key)
        if found.hit and found.value:
            return found.value
        try:
            out = await self._complete(text, source, target)
        except BabeldeskError as exc:
            log.warning("translation %s -> %s failed: %s", source, target, exc.message)
            return None
        if not self._plausible(text, out, source, target):
            return None
        await self.cache.set(key, out, TRANSLATION_TTL_S)
        return out

    async def _complete(self, text: str, source: str | None, target: str) -> str:
        assert self.model is not None
        request = ChatRequest(relay_prompt(text, source, target),
                              SamplingParams(max_tokens=self.max_tokens, temperature=0.0))
        return await generated_text(self.model.stream_chat(request))

    def _plausible(self, text: str, out: str, source: str | None, target: str) -> bool:
        if not out or out.casefold() == text.strip().casefold():
            return False
        if len(out) > 4 * len(text) + 80:  # a rambling answer, not a translation
            return False
        if sorted(_DIGITS.findall(text)) != sorted(_DIGITS.findall(out)):
            return False  # an order number, price or date changed: worse than untranslated
        got = self.detector.detect(out)
        # short outputs are hard to detect; only a confident source-language one is refused
        return not (source and got.language == source and got.confidence > 0.8)


@dataclass(frozen=True, slots=True)
class QueueItem:
    session_id: str
    language: str | None  # the customer's
    reason: str | None  # the handoff reason
    intent: str | None  # the last intent the assistant recognised
    waiting_s: float  # seconds since the handoff
    last_message: str  # the customer's last message, as written

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AgentDesk:
    def __init__(self, sessions: SessionStore, bus: EventBus, translator: Translator, *,
                 notifier: WebhookNotifier | None = None, public_url: str = "",
                 metrics: Metrics | None = None) -> None:
        self.sessions, self.bus, self.translator = sessions, bus, translator
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()  # translations for agents, in flight
        self.notifier = notifier  # the webhooks (docs/webhooks.md)
        self.public_url = public_url.rstrip("/")

    def transcript_url(self, session_id: str) -> str:
        return f"{self.public_url}/v1/agent/conversations/{session_id}"

    # --- the customer's side (called by the pipeline) ------------------------------------

    async def customer_message(self, t: Transcript, text: str, lang: str,
                               lock: str | None | Keep = KEEP) -> Turn:
        """Store a customer message of an agent's conversation and deliver it at once;
        ``Conflict`` when the conversation went back to the assistant meanwhile (nothing
        written). The translation for the owner follows as a ``translation`` event, off
        the customer's request: translating first would hold the customer's reply for
        seconds and let a quick second message be stored before the first. The agent's
        view translates stored customer turns on reading (cached, warmed by this one)."""
        turn = Turn("user", text, language=lang, source="agent")
        await self.sessions.record(t.session_id, (turn,), language=lock,
                                   guard=Guard.of(State.WAITING, State.WITH_AGENT))
        await self._publish(t.session_id, {"type": "message", "turn": asdict(turn)})
        if t.state == State.WITH_AGENT.value and t.agent_language and t.agent_language != lang:
            task = asyncio.get_running_loop().create_task(
                self._translate_for_agent(t.session_id, turn, t.agent_language))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return turn

    async def _translate_for_agent(self, session_id: str, turn: Turn, target: str) -> None:
        out = await self.translator.translate(turn.text, turn.language, target)
        if out:
            await self._publish(session_id, {"type": "translation", "time": turn.time,
                                             "text": turn.text, "translation": out,
                                             "translation_language": target})

    async def handed_off(self, session_id: str) -> None:
        """The pipeline moved a conversation to waiting_for_agent."""
        await self._queue_depth()
        await self.bus.publish(AGENTS_CHANNEL, {"type": "queue", "session_id": session_id,
                                                "state": State.WAITING.value})
        await self.bus.publish(session_channel(session_id),
                               {"type": "state", "state": State.WAITING.value})

    async def rate(self, session_id: str, value: str) -> dict[str, Any]:
        """The customer's thumbs up / down on the conversation's latest answer (assistant's
        or agent's); stored as a system turn (``source: rating``), counted, sent as
        ``conversation.rated``. 409 when nothing has been answered yet."""
        if value not in (Rating.UP.value, Rating.DOWN.value):
            raise InvalidRequest("value must be up or down", param="value")
        t = await self.sessions.transcript(session_id)
        rated = next((x for x in reversed(t.turns) if x.role == "agent" or (
            x.role == "assistant" and x.source != "handoff")), None)
        if rated is None:
            raise Conflict("there is no answer to rate yet", state=t.state)
        before = [x.text for x in t.turns if x.role == "system" and x.source == RATING_SOURCE]
        lang = customer_language(t) or "und"
        await self.sessions.record(session_id, (Turn("system", value, language=lang,
                                                     source=RATING_SOURCE),))
        intent = next((x.intent for x in t.turns if x.intent), None) or "none"
        handed_off = bool(t.handoff_reason)
        if self.metrics is not None:
            self.metrics.ratings_total.labels(value, lang, intent).inc()
            if value == Rating.UP.value and not handed_off and (before or ["-"])[-1] != value:
                self.metrics.conversations_total.labels(
                    Outcome.RESOLVED_CONFIRMED.value, lang, intent).inc()
        self._emit("conversation.rated", t, {"rating": value, "rated_source": (
            "agent" if rated.role == "agent" else rated.source)})
        return {"session_id": session_id, "rating": value}

    # --- the agent's side ----------------------------------------------------------------

    async def queue(self, limit: int = 100) -> list[QueueItem]:
        """The longest-waiting ``limit`` conversations, with what an agent needs to pick."""
        now = time.time()
        items = []
        for sid, since in await self.sessions.waiting(limit):
            try:
                t = await self.sessions.transcript(sid, last=20)
            except BabeldeskError:  # erased or expired since
                continue
            users = [x for x in t.turns if x.role == "user"]
            intent = next((x.intent for x in reversed(t.turns) if x.intent), None)
            items.append(QueueItem(sid, customer_language(t), t.handoff_reason, intent,
                                   round(max(0.0, now - since), 3),
                                   users[-1].text if users else ""))
        return items

    async def claim(self, agent: str, agent_language: str, session_id: str) -> Transcript:
        await self._move(session_id, Guard.of(State.WAITING), State.WITH_AGENT, agent,
                         Turn("system", f"{agent} joined", agent=agent, language=agent_language),
                         new_agent=agent, agent_language=agent_language)
        t = await self.sessions.transcript(session_id)
        self._emit("agent.joined", t, {"agent_language": agent_language})
        return t

    async def reply(self, agent: str, session_id: str, text: str) -> Turn:
        """The agent's reply, translated into the customer's language (or sent as written
        and flagged ``untranslated`` when the model cannot), stored with both versions."""
        t = await self.sessions.transcript(session_id, last=50)
        self._check(t, agent)
        src = t.agent_language
        dst = customer_language(t)
        translated = (await self.translator.translate(text, src, dst)
                      if dst and src and dst != src else None)
        turn = Turn("agent", text, language=src, source="agent", agent=agent,
                    translation=translated, translation_language=dst if translated else None,
                    untranslated=bool(dst and src and dst != src and not translated))
        await self._write(session_id, (turn,), Guard.of(State.WITH_AGENT, agent=agent))
        await self._publish(session_id, {"type": "message", "turn": asdict(turn)})
        return turn

    async def close(self, agent: str, session_id: str) -> None:
        await self._move(session_id, Guard.of(State.WITH_AGENT, agent=agent), State.CLOSED,
                         agent, Turn("system", f"{agent} closed the conversation", agent=agent))
        self._emit("conversation.closed", await self.sessions.transcript(session_id),
                   {"closed_by": "agent"})

    async def release(self, agent: str, session_id: str) -> None:
        """Back to the assistant, which answers the customer's next message."""
        await self._move(session_id, Guard.of(State.WITH_AGENT, agent=agent), State.BOT, agent,
                         Turn("system", f"{agent} returned the conversation to the assistant",
                              agent=agent), new_agent=None)

    # --- plumbing ------------------------------------------------------------------------

    async def _move(self, session_id: str, guard: Guard, state: State, agent: str, note: Turn,
                    new_agent: str | None | Keep = KEEP, agent_language: str | None = None
                    ) -> None:
        await self._write(session_id, (note,), guard, state=state, new_agent=new_agent,
                          agent_language=agent_language)
        await self._publish(session_id, {"type": "state", "state": state.value,
                                         "agent": agent, "turn": asdict(note)})
        await self.bus.publish(AGENTS_CHANNEL, {"type": "queue", "session_id": session_id,
                                                "state": state.value, "agent": agent})
        await self._queue_depth()

    async def _queue_depth(self) -> None:
        """``agent_queue_depth`` after a move (per process; the store's queue is shared)."""
        if self.metrics is not None:
            self.metrics.agent_queue_depth.set(len(await self.sessions.waiting(QUEUE_LIMIT)))

    async def _write(self, session_id: str, turns: tuple[Turn, ...], guard: Guard, *,
                     state: State | None = None, new_agent: str | None | Keep = KEEP,
                     agent_language: str | None = None) -> None:
        try:
            await self.sessions.record(session_id, turns, guard=guard, state=state,
                                       agent=new_agent, agent_language=agent_language)
        except Conflict as exc:
            raise self._refusal(exc, guard.agent) from None

    def _check(self, t: Transcript, agent: str) -> None:
        """Early refusal before a translation is spent (the write checks again)."""
        guard = Guard.of(State.WITH_AGENT, agent=agent)
        if not guard.allows(t.state, t.agent):
            raise self._refusal(Conflict(f"the conversation is {t.state}", state=t.state,
                                         owner=t.agent), agent)

    @staticmethod
    def _refusal(exc: Conflict, agent: str | None) -> BabeldeskError:
        if agent is not None and exc.state == State.WITH_AGENT.value and exc.owner != agent:
            return Forbidden("another agent owns this conversation")
        if exc.state == State.WAITING.value and agent is not None:
            return Conflict("claim the conversation first", state=exc.state)
        return Conflict(f"the conversation is {exc.state}", state=exc.state, owner=exc.owner)

    async def _publish(self, session_id: str, event: dict[str, Any]) -> None:
        await self.bus.publish(session_channel(session_id), event)

    def _emit(self, kind: str, t: Transcript, extra: dict[str, Any]) -> None:
        if self.notifier is not None:
            self.notifier.notify(conversation_event(
                kind, t.session_id, self.transcript_url(t.session_id),
                language=customer_language(t), state=t.state, agent=t.agent,
                reason=t.handoff_reason, **extra))
