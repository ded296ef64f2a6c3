"""One customer message through the assistant:

  validate -> session + language lock -> answer cache (first, self-contained messages)
  -> intent matcher (+ model verifier when unsure) -> handoff rules
  -> knowledge-base answer (translated by the model when the KB lacks the language)
     or a grounded model answer -> transcript, metrics, webhook.

``stream()`` yields text deltas and ends with the full ``SupportReply``; ``handle()``
collects it. The request, reply and outcome types are ``messages.py``; what the model says
(grounded prompts, retries, leak check) is ``answers.py``. The model is any ``ChatModel``: the in-process engine (``serve``) or the
fleet client (``gateway``); this module never knows which.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from babeldesk.config import SupportConfig
from babeldesk.errors import BabeldeskError, Conflict
from babeldesk.knowledge.kb import KnowledgeBase
from babeldesk.knowledge.matcher import IntentMatcher, Match, llm_verifier
from babeldesk.knowledge.retrieve import Retriever
from babeldesk.store import (
    KEEP,
    AnswerCache,
    CacheKey,
    EventBus,
    Guard,
    Keep,
    LookupResult,
    SessionStore,
    State,
    Transcript,
    Turn,
    document_answer_key,
    kb_answer_key,
    model_answer_key,
    new_session_id,
    normalise_text,
)
from babeldesk.store.events import MemoryEventBus
from babeldesk.support.agents import AgentDesk, Translator
from babeldesk.support.answers import HUMAN_INTENT, ModelAnswers
from babeldesk.support.handoff import HandoffReason, WebhookNotifier, event, repeats
from babeldesk.support.language import (
    Detection,
    LanguageDetector,
    Prior,
    kb_vocabulary,
    locale_language,
    normalize_language_code,
    text_weight,
)
from babeldesk.support.language_lock import LanguageLock, LockState, with_earlier
from babeldesk.support.messages import (  # re-exported: the pipeline's request and reply
    Event,
    Outcome,
    Source,
    SupportReply,
    SupportRequest,
    cached_outcome,
    cached_value,
    validate_message,
)
from babeldesk.support.prompt import translation_prompt
from babeldesk.telemetry.metrics import Metrics
from babeldesk.types import ChatModel

__all__ = [
    "Event", "Source", "SupportPipeline", "SupportReply", "SupportRequest", "decode_lock",
    "encode_lock", "validate_message",
]

log = logging.getLogger(__name__)

HISTORY_TURNS = 20  # transcript turns read per message (the prompt budget trims further)
FALLBACK_HANDOFF = "A colleague from our team will take over this conversation shortly."
AGENT_STATES = (State.WAITING.value, State.WITH_AGENT.value)  # the assistant is silent


def encode_lock(state: LockState) -> str | None:
    """The session's language field: ``es`` or ``es>fr`` (locked, pending switch)."""
    if state.locked is None:
        return None
    return state.locked + (f">{state.pending}" if state.pending else "")


def decode_lock(value: str | None) -> LockState:
    if not value:
        return LockState()
    locked, _, pending = value.partition(">")
    return LockState(locked=locked, pending=pending or None)


class SupportPipeline:
    def __init__(self, *, kb: KnowledgeBase, matcher: IntentMatcher, sessions: SessionStore,
                 cache: AnswerCache, model: ChatModel | None, config: SupportConfig,
                 metrics: Metrics, max_message_chars: int = 4000,
                 detector: LanguageDetector | None = None, lock: LanguageLock | None = None,
                 notifier: WebhookNotifier | None = None,
                 redact: Callable[[str], str] | None = None,
                 documents: Retriever | None = None, bus: EventBus | None = None) -> None:
        self.kb, self.matcher, self.sessions, self.cache = kb, matcher, sessions, cache
        self.model, self.config, self.metrics = model, config, metrics
        self.max_message_chars = max_message_chars
        # the KB's own words count as evidence for their language
        self.detector = detector or LanguageDetector(vocabulary=kb_vocabulary(kb))
        self.lock = lock or LanguageLock()
        self.notifier = notifier
        self.redact = redact or (lambda t: t)  # for what leaves the process (webhook)
        # the help center; None or empty: unsure matches go to the intent-grounded prompt
        self.documents = documents if documents is not None and len(documents) else None
        shop = kb.shop  # what a document prompt holds besides the passages
        self._prompt_version = hashlib.sha256(
            f"{shop.name}\x00{shop.persona}".encode()).hexdigest()[:12]
        self._verifier = llm_verifier(model) if model is not None and config.verifier else None
        self.answers = ModelAnswers(model, kb, config, self.detector)  # the model's replies
        # labelled metric children, resolved once per label set (labels() takes a lock)
        self._lookups = functools.lru_cache(maxsize=64)(metrics.cache_lookups_total.labels)
        self._messages = functools.lru_cache(maxsize=1024)(metrics.messages_total.labels)
        # human agents: the queue, claims, replies, translation both ways, live events
        self.desk = AgentDesk(sessions, bus or MemoryEventBus(),
                              Translator(model, cache, self.detector), notifier=notifier,
                              public_url=config.public_url, metrics=metrics)

    async def handle(self, request: SupportRequest) -> SupportReply:
        async for item in self.stream(request, live=False):
            if isinstance(item, SupportReply):
                return item
        raise RuntimeError("support stream ended without a reply")

    async def stream(self, request: SupportRequest, *, live: bool = True) -> AsyncIterator[Event]:
        """Deltas, then the reply. ``live`` False: nobody sees the deltas before the reply,
        so a model answer that breaks off can be generated again instead of handed off."""
        started = time.perf_counter()
        text = validate_message(request.message, self.max_message_chars)
        explicit = normalize_language_code(request.language) if request.language else None
        new = not request.session_id
        if request.session_id:
            transcript = await self.sessions.transcript(request.session_id, last=HISTORY_TURNS)
            session_id = request.session_id
        else:  # stored with its first turns, in the same write (``_record``)
            session_id = new_session_id()
            transcript = Transcript(session_id, time.time(), ())
        lang, lock = self._language(transcript, text, explicit, request.locale)
        if transcript.state in AGENT_STATES:  # an agent's conversation: no assistant reply
            try:
                yield await self._to_agent(transcript, text, lang, lock, started)
                return
            except Conflict:  # returned to the assistant (or closed) meanwhile: answer
                transcript = await self.sessions.transcript(session_id, last=HISTORY_TURNS)
        first_message = not transcript.turns

        outcome: Outcome | None = None
        text_key = model_answer_key(lang, text, self.kb.version) if first_message else None
        if text_key is not None:
            outcome = await self._from_cache(text_key)
        if outcome is None:
            match = await self.matcher.amatch(text, self._verifier, language=lang)
            outcome = await self._decide(session_id, transcript, text, lang, match)
            if outcome is None:  # the model path streams
                async for item in self._answer(transcript, text, lang, match, live,
                                               first_message):
                    if isinstance(item, str):
                        yield item
                    else:
                        outcome = item
            else:
                yield outcome.reply
            assert outcome is not None
            if text_key is not None and outcome.cacheable:
                await self._cache_set(text_key, cached_value(
                    outcome.reply, outcome.intent, outcome.confidence, outcome.translated))
        else:
            yield outcome.reply

        reply = SupportReply(
            session_id=session_id, reply=outcome.reply, language=lang,
            source=outcome.source.value, intent=outcome.intent,
            confidence=round(outcome.confidence, 4),
            handoff={"reason": outcome.handoff.value} if outcome.handoff else None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            translated=outcome.translated, sources=outcome.sources,
            state=State.WAITING.value if outcome.handoff else State.BOT.value)
        try:
            await self._record(session_id, text, reply, new=new, lock=lock,
                               reopen=transcript.state == State.CLOSED.value)
        except Conflict:  # handed off by a message of the same session meanwhile
            transcript = await self.sessions.transcript(session_id, last=HISTORY_TURNS)
            reply = await self._to_agent(transcript, text, lang, lock, started)
        yield reply

    # --- steps ---------------------------------------------------------------------------

    def _language(self, transcript: Transcript, text: str, explicit: str | None,
                  locale: str | None = None) -> tuple[str, str | None | Keep]:
        """The reply language, and the session's new lock value (KEEP: unchanged), which
        ``_record`` stores with the turns. The chat page's locale and the session's locked
        language are priors of the detector (and, before the lock, earlier messages)."""
        state = decode_lock(transcript.language)
        prior = Prior(locale=locale_language(locale), session=state.locked)
        sample = text if state.locked else with_earlier(transcript.turns, text)
        detection: Detection = self.detector.detect(sample, prior)
        decision = self.lock.step(state, detection, text_weight(sample), explicit, prior.locale)
        return decision.language, (KEEP if decision.state == state
                                   else encode_lock(decision.state))

    async def _from_cache(self, key: CacheKey) -> Outcome | None:
        found = await self.cache.get(key)
        self._lookups(key.kind.value, found.result.value).inc()
        if not found.hit or found.value is None:
            return None
        outcome = cached_outcome(found.value)
        if outcome is None:
            log.warning("ignoring a malformed cache entry for %s", key.key)
        return outcome

    async def _cache_set(self, key: CacheKey, value: str) -> None:
        if not await self.cache.set(key, value):  # backend unreachable: skipped, counted
            self._lookups(key.kind.value, LookupResult.ERROR.value).inc()

    async def _decide(self, session_id: str, transcript: Transcript, text: str, lang: str,
                      match: Match) -> Outcome | None:
        """Handoff or a KB answer; None means: ask the model."""
        if match.intent is not None and self.kb.intents[match.intent].handoff:
            return await self._handoff(lang, HandoffReason.CUSTOMER_REQUEST, match.intent,
                                       match.confidence)
        if self._repeated(transcript, text, match.intent):
            return await self._handoff(lang, HandoffReason.REPEATED_QUESTION, match.intent,
                                       match.confidence)
        if match.intent is None:
            return None
        reply, source, translated = await self._kb_answer(match.intent, lang)
        return Outcome(reply, source, match.intent, match.confidence, None, translated)

    async def _kb_answer(self, intent: str, lang: str) -> tuple[str, Source, bool]:
        """The KB answer in ``lang``; translated (and cached) when the KB lacks it."""
        direct = self.kb.answer(intent, lang)
        if direct is not None:
            return direct, Source.KNOWLEDGE_BASE, False
        key = kb_answer_key(intent, lang, self.kb.version)
        found = await self.cache.get(key)
        self._lookups(key.kind.value, found.result.value).inc()
        if found.hit and found.value:
            return found.value, Source.CACHE, True
        english = self.kb.answer(intent, "en") or next(iter(self.kb.intents[intent].answers.values()))
        if self.model is None:
            return english, Source.KNOWLEDGE_BASE, False
        try:
            text = await self.answers.complete(translation_prompt(english, lang))
        except BabeldeskError as exc:
            log.warning("translation to %s failed (%s); answering in English", lang, exc.message)
            return english, Source.KNOWLEDGE_BASE, False
        if not text:
            return english, Source.KNOWLEDGE_BASE, False
        await self._cache_set(key, text)
        return text, Source.KNOWLEDGE_BASE, True

    async def _answer(self, transcript: Transcript, text: str, lang: str, match: Match,
                      live: bool, first_message: bool) -> AsyncIterator[str | Outcome]:
        """No sure intent: with a help center, an answer from its passages, or a handoff
        when no passage is relevant (never an answer the shop's texts do not ground);
        without one, the model answers from the best intents' answers."""
        if self.documents is None:
            async for item in self.answers.answer(transcript, text, lang, match, self._handoff,
                                                  live):
                yield item
            return
        retrieval = await self.documents.aretrieve(text, lang)
        self.metrics.retrieval_duration_seconds.observe(retrieval.seconds)
        if not retrieval.relevant or self.model is None:
            yield await self._handoff(lang, HandoffReason.LOW_CONFIDENCE, None, match.confidence)
            return
        key = (document_answer_key(lang, text, self._prompt_version, retrieval.chunk_hashes)
               if first_message else None)
        if key is not None:
            cached = await self._from_cache(key)
            if cached is not None:
                yield cached.reply
                yield cached
                return
        outcome: Outcome | None = None
        async for item in self.answers.answer(transcript, text, lang, match, self._handoff,
                                              live, retrieval):
            if isinstance(item, str):
                yield item
            else:
                outcome = item
        assert outcome is not None
        if key is not None and outcome.source is Source.DOCUMENT and outcome.cacheable:
            await self._cache_set(key, cached_value(outcome.reply, None, outcome.confidence,
                                                     False, outcome.sources))
        # never under the message's text key: that one outlives an edit of the article
        yield replace(outcome, cacheable=False)

    async def _handoff(self, lang: str, reason: HandoffReason, intent: str | None,
                       confidence: float) -> Outcome:
        if HUMAN_INTENT in self.kb.intents:
            reply, _, translated = await self._kb_answer(HUMAN_INTENT, lang)
        else:  # a shop KB without a contact_human entry
            reply, translated = FALLBACK_HANDOFF, False
        return Outcome(reply, Source.HANDOFF, intent, confidence, reason, translated,
                        cacheable=False)

    def _repeated(self, transcript: Transcript, text: str, intent: str | None) -> bool:
        key = intent or ("text:" + normalise_text(text))
        previous = [t.intent or ("text:" + normalise_text(t.text))
                    for t in transcript.turns if t.role == "user"]
        return repeats(previous, key) >= self.config.repeat_handoff

    async def _record(self, session_id: str, text: str, reply: SupportReply, *, new: bool,
                      lock: str | None | Keep, reopen: bool = False) -> None:
        """Both turns, the language lock and the handoff (state ``waiting_for_agent``) in
        one store write, guarded: only while the conversation is the assistant's
        (``Conflict`` otherwise, nothing written). The handoff webhook fires only after
        that write, so once per transition, never once per message. A closed conversation
        is reopened with the assistant (``reopen``)."""
        reason = reply.handoff["reason"] if reply.handoff else None
        state = State.WAITING if reason else (State.BOT if reopen else None)
        await self.sessions.record(session_id, (
            Turn("user", text, language=reply.language, intent=reply.intent,
                 confidence=reply.confidence),
            Turn("assistant", reply.reply, language=reply.language, source=reply.source,
                 intent=reply.intent, confidence=reply.confidence),
        ), create=new, language=lock, handoff_reason=reason,
            guard=Guard.of(State.BOT, State.CLOSED) if reopen else Guard.of(State.BOT),
            state=state, agent=None if reopen else KEEP)
        self._messages(reply.language, reply.source).inc()
        if reason:
            self.metrics.handoffs_total.labels(reason).inc()
            self.metrics.conversations_total.labels(
                "handed_off", reply.language, reply.intent or "none").inc()
            if self.notifier is not None:
                self.notifier.notify(event(session_id, HandoffReason(reason), reply.language,
                                           self.redact(text), reply.intent,
                                           self.desk.transcript_url(session_id)))
            await self.desk.handed_off(session_id)

    async def _to_agent(self, transcript: Transcript, text: str, lang: str,
                        lock: str | None | Keep, started: float) -> SupportReply:
        """A message in a conversation waiting for or owned by an agent: stored for the
        agent (guarded: ``Conflict`` when it went back to the assistant meanwhile), no
        assistant reply."""
        sid = transcript.session_id
        await self.desk.customer_message(transcript, text, lang, lock)
        self._messages(lang, Source.AGENT.value).inc()
        reason = transcript.handoff_reason
        return SupportReply(
            session_id=sid, reply="", language=lang, source=Source.AGENT.value, intent=None,
            confidence=0.0, handoff={"reason": reason} if reason else None,
            latency_ms=round((time.perf_counter() - started) * 1000, 3), state=transcript.state)
