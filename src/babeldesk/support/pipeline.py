"""One customer message through the assistant:

  validate -> session + language lock -> answer cache (first, self-contained messages)
  -> intent matcher (+ model verifier when unsure) -> handoff rules
  -> knowledge-base answer (translated by the model when the KB lacks the language)
     or a grounded model answer -> transcript, metrics, webhook.

``stream()`` yields text deltas and ends with the full ``SupportReply``; ``handle()``
collects it. The model is any ``ChatModel``: the in-process engine (``serve``) or the
fleet client (``gateway``); this module never knows which.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace

from babeldesk.config import SupportConfig
from babeldesk.errors import (
    BabeldeskError,
    Conflict,
    GenerationFailed,
    InvalidRequest,
    PayloadTooLarge,
)
from babeldesk.knowledge.retrieve import Retrieval, Retriever
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
from babeldesk.support.handoff import HandoffReason, WebhookNotifier, event, repeats
from babeldesk.knowledge.kb import KnowledgeBase
from babeldesk.support.language import (
    Detection,
    LanguageDetector,
    Prior,
    kb_vocabulary,
    locale_language,
    normalize_language_code,
    text_weight,
)
from babeldesk.support.language_lock import LanguageLock, LockState
from babeldesk.knowledge.matcher import IntentMatcher, Match, llm_verifier
from babeldesk.support.prompt import (
    NO_ANSWER,
    Fact,
    Passage,
    answer_prompt,
    document_prompt,
    document_rules,
    leaks_system_prompt,
    system_prompt,
    translation_prompt,
)
from babeldesk.telemetry.metrics import Metrics
from babeldesk.types import ChatMessage, ChatModel, ChatRequest, SamplingParams, generated_text

log = logging.getLogger(__name__)

HUMAN_INTENT = "contact_human"
_CLAUSE = re.compile(r"(?<=[.!?;:,])\s+")  # clause ends in scripts written with spaces
HISTORY_TURNS = 20
MODEL_ATTEMPTS = 2  # model answers tried when one fails before any text is shown
FALLBACK_HANDOFF = "A colleague from our team will take over this conversation shortly."  # transcript turns read per message (the prompt budget trims further)


class Source(str, enum.Enum):
    KNOWLEDGE_BASE = "knowledge_base"
    CACHE = "cache"
    MODEL = "model"
    DOCUMENT = "document"  # the model, from help-center passages (reply.sources)
    HANDOFF = "handoff"
    AGENT = "agent"  # the conversation is an agent's: stored and delivered, no assistant reply


AGENT_STATES = (State.WAITING.value, State.WITH_AGENT.value)  # the assistant is silent

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


def _cached_value(reply: str, intent: str | None, confidence: float, translated: bool,
                  sources: tuple[dict[str, str], ...] = ()) -> str:
    data: dict[str, object] = {"reply": reply, "intent": intent,
                               "confidence": round(confidence, 4), "translated": translated}
    if sources:
        data["sources"] = list(sources)
    return json.dumps(data, ensure_ascii=False)


@functools.lru_cache(maxsize=1024)  # the same cached answers come back again and again
def _cached_outcome(value: str) -> _Outcome | None:
    try:
        data = json.loads(value)
        sources = tuple({"title": str(s["title"]), "url": str(s["url"])}
                        for s in data.get("sources", ()))
        return _Outcome(str(data["reply"]), Source.CACHE, data.get("intent"),
                        float(data.get("confidence", 0.0)), None,
                        translated=bool(data.get("translated")), cacheable=False,
                        sources=sources)
    except (ValueError, KeyError, TypeError):
        return None


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

        outcome: _Outcome | None = None
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
                await self._cache_set(text_key, _cached_value(
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
        language are priors of the detector: they decide short, ambiguous messages."""
        state = decode_lock(transcript.language)
        prior = Prior(locale=locale_language(locale), session=state.locked)
        detection: Detection = self.detector.detect(text, prior)
        decision = self.lock.step(state, detection, text_weight(text), explicit)
        return decision.language, (KEEP if decision.state == state
                                   else encode_lock(decision.state))

    async def _from_cache(self, key: CacheKey) -> _Outcome | None:
        found = await self.cache.get(key)
        self._lookups(key.kind.value, found.result.value).inc()
        if not found.hit or found.value is None:
            return None
        outcome = _cached_outcome(found.value)
        if outcome is None:
            log.warning("ignoring a malformed cache entry for %s", key.key)
        return outcome

    async def _cache_set(self, key: CacheKey, value: str) -> None:
        if not await self.cache.set(key, value):  # backend unreachable: skipped, counted
            self._lookups(key.kind.value, LookupResult.ERROR.value).inc()

    async def _decide(self, session_id: str, transcript: Transcript, text: str, lang: str,
                      match: Match) -> _Outcome | None:
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
        return _Outcome(reply, source, match.intent, match.confidence, None, translated)

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
            text = await self._complete(translation_prompt(english, lang))
        except BabeldeskError as exc:
            log.warning("translation to %s failed (%s); answering in English", lang, exc.message)
            return english, Source.KNOWLEDGE_BASE, False
        if not text:
            return english, Source.KNOWLEDGE_BASE, False
        await self._cache_set(key, text)
        return text, Source.KNOWLEDGE_BASE, True

    async def _complete(self, messages: list[ChatMessage], session_id: str | None = None) -> str:
        assert self.model is not None
        params = SamplingParams(max_tokens=self.config.reply_max_tokens,
                                temperature=self.config.temperature)
        request = ChatRequest(messages, params, session_id=session_id)
        return await generated_text(self.model.stream_chat(request))

    async def _answer(self, transcript: Transcript, text: str, lang: str, match: Match,
                      live: bool, first_message: bool) -> AsyncIterator[str | _Outcome]:
        """No sure intent: with a help center, an answer from its passages, or a handoff
        when no passage is relevant (never an answer the shop's texts do not ground);
        without one, the model answers from the best intents' answers."""
        if self.documents is None:
            async for item in self._model_answer(transcript, text, lang, match, live):
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
        outcome: _Outcome | None = None
        async for item in self._model_answer(transcript, text, lang, match, live, retrieval):
            if isinstance(item, str):
                yield item
            else:
                outcome = item
        assert outcome is not None
        if key is not None and outcome.source is Source.DOCUMENT and outcome.cacheable:
            await self._cache_set(key, _cached_value(outcome.reply, None, outcome.confidence,
                                                     False, outcome.sources))
        # never under the message's text key: that one outlives an edit of the article
        yield replace(outcome, cacheable=False)

    async def _model_answer(self, transcript: Transcript, text: str, lang: str,
                            match: Match, live: bool = True,
                            retrieval: Retrieval | None = None) -> AsyncIterator[str | _Outcome]:
        """Grounded answer from the model, streamed. NO_ANSWER, a failing model or a reply
        that leaks the instructions end as a handoff / a safe reply instead. A model stream
        that fails before any of its text was shown is tried once more (the fleet routes the
        retry around a worker that just failed)."""
        if self.model is None:
            yield await self._handoff(lang, HandoffReason.LOW_CONFIDENCE, None, match.confidence)
            return
        facts = [Fact(c.intent_id, self.kb.answer(c.intent_id, lang)
                      or self.kb.answer(c.intent_id, "en") or "")
                 for c in match.candidates if not self.kb.intents[c.intent_id].handoff]
        # an agent's replies count as the assistant's, as the customer read them
        history = [ChatMessage("user" if t.role == "user" else "assistant",
                               t.translation if t.role == "agent" and t.translation else t.text)
                   for t in transcript.turns if t.role in ("user", "assistant", "agent")]
        shop = self.kb.shop
        if retrieval is None:
            messages = answer_prompt(shop.persona, shop.name, lang, facts, history, text,
                                     self.config.history_tokens)
        else:  # grounded in the help center's passages instead of the intents
            passages = [Passage(h.chunk.heading, h.chunk.text) for h in retrieval.hits]
            messages = document_prompt(shop.persona, shop.name, lang, passages, history, text,
                                       self.config.history_tokens)
        params = SamplingParams(max_tokens=self.config.reply_max_tokens,
                                temperature=self.config.temperature)
        request = ChatRequest(messages, params, session_id=transcript.session_id)
        for attempt in range(MODEL_ATTEMPTS):
            parts: list[str] = []
            held: str | None = ""  # text held back while it may still become NO_ANSWER
            try:
                async for delta in self.model.stream_chat(request):
                    if delta.error or delta.finish_reason == "error":
                        raise GenerationFailed(delta.error or "model stream broke off")
                    parts.append(delta.text)
                    if not live:
                        continue
                    if held is not None:
                        held += delta.text
                        probe = held.lstrip()
                        if NO_ANSWER.startswith(probe) or probe.startswith(NO_ANSWER):
                            continue
                        yield held
                        held = None
                    elif delta.text:
                        yield delta.text
                break
            except BabeldeskError as exc:
                shown = live and held is None  # some text already reached the customer
                if shown or attempt + 1 == MODEL_ATTEMPTS:
                    log.warning("model path failed: %s", exc.message)
                    yield await self._handoff(lang, HandoffReason.MODEL_UNAVAILABLE,
                                              match.intent, match.confidence)
                    return
                log.warning("model path failed before any text was shown (%s); retrying",
                            exc.message)
        reply = "".join(parts).strip()
        if not reply or NO_ANSWER in reply:
            yield await self._handoff(lang, HandoffReason.LOW_CONFIDENCE, None, match.confidence)
            return
        system = (system_prompt(shop.persona, shop.name, lang, facts) if retrieval is None
                  else document_rules(shop.name, lang))  # quoting a passage is no leak
        if leaks_system_prompt(reply, system):
            log.warning("model reply repeated its instructions; replaced")
            safe = self.kb.answer(HUMAN_INTENT, lang) or self.kb.answer(HUMAN_INTENT, "en") or ""
            yield _Outcome(safe, Source.MODEL, None, match.confidence, None, cacheable=False)
            return
        if retrieval is not None:
            yield _Outcome(self._trim_to_language(reply, lang), Source.DOCUMENT, None,
                           match.confidence, None, sources=tuple(retrieval.sources()))
            return
        yield _Outcome(reply, Source.MODEL, None, match.confidence, None)

    def _trim_to_language(self, reply: str, lang: str) -> str:
        """A document answer without the untranslated tail the small model leaves when it
        drifts into the passages' language mid-answer ("Las tarjetas regalo caducan en 3
        años, counted from the end of the year."): from the first clause of 3+ words
        that the detector reads as another language, the reply is cut. A reply that does
        not start in ``lang`` is left whole (nothing better to show)."""
        if self.detector.detect(reply).language == lang:
            return reply
        clauses = _CLAUSE.split(reply)
        kept = clauses[:1]
        for clause in clauses[1:]:
            if len(clause.split()) >= 3 and self.detector.detect(clause).language != lang:
                break
            kept.append(clause)
        if len(kept) == len(clauses) or self.detector.detect(kept[0]).language != lang:
            return reply
        return " ".join(kept).rstrip(",;: ") + ("" if kept[-1][-1:] in ".!?" else ".")

    async def _handoff(self, lang: str, reason: HandoffReason, intent: str | None,
                       confidence: float) -> _Outcome:
        if HUMAN_INTENT in self.kb.intents:
            reply, _, translated = await self._kb_answer(HUMAN_INTENT, lang)
        else:  # a shop KB without a contact_human entry
            reply, translated = FALLBACK_HANDOFF, False
        return _Outcome(reply, Source.HANDOFF, intent, confidence, reason, translated,
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


@dataclass(frozen=True, slots=True)  # shared: _cached_outcome hands out one per value
class _Outcome:
    reply: str
    source: Source
    intent: str | None
    confidence: float
    handoff: HandoffReason | None
    translated: bool = False
    cacheable: bool = True  # may be stored under the message's text key
    sources: tuple[dict[str, str], ...] = ()  # document answers: the passages' {title, url}
