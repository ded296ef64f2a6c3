"""The model's answers for the support pipeline: a reply grounded in the best intents'
answers or in help-center passages, streamed with a possible ``NO_ANSWER`` held back, tried
once more when it fails before any text was shown, checked for leaked instructions, and
(document answers) cut where the small model drifts into the passages' language. Every
way it cannot answer ends in the pipeline's handoff (``Handoff``)."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from babeldesk.config import SupportConfig
from babeldesk.errors import BabeldeskError, GenerationFailed
from babeldesk.knowledge.kb import KnowledgeBase
from babeldesk.knowledge.matcher import Match
from babeldesk.knowledge.retrieve import Retrieval
from babeldesk.store import Transcript
from babeldesk.support.handoff import HandoffReason
from babeldesk.support.language import LanguageDetector
from babeldesk.support.messages import Outcome, Source
from babeldesk.support.prompt import (
    NO_ANSWER,
    Fact,
    Passage,
    answer_prompt,
    document_prompt,
    document_rules,
    leaks_system_prompt,
    system_prompt,
)
from babeldesk.types import ChatMessage, ChatModel, ChatRequest, SamplingParams, generated_text

log = logging.getLogger(__name__)

HUMAN_INTENT = "contact_human"
MODEL_ATTEMPTS = 2  # model answers tried when one fails before any text is shown
_CLAUSE = re.compile(r"(?<=[.!?;:,])\s+")  # clause ends in scripts written with spaces

# the pipeline's handoff: (language, reason, intent, confidence) -> its outcome
Handoff = Callable[[str, HandoffReason, str | None, float], Awaitable[Outcome]]


class ModelAnswers:
    """The model side of the pipeline; ``model`` None: every answer is a handoff."""

    def __init__(self, model: ChatModel | None, kb: KnowledgeBase, config: SupportConfig,
                 detector: LanguageDetector) -> None:
        self.model, self.kb, self.config, self.detector = model, kb, config, detector

    async def complete(self, messages: list[ChatMessage], session_id: str | None = None) -> str:
        assert self.model is not None
        params = SamplingParams(max_tokens=self.config.reply_max_tokens,
                                temperature=self.config.temperature)
        request = ChatRequest(messages, params, session_id=session_id)
        return await generated_text(self.model.stream_chat(request))

    async def answer(self, transcript: Transcript, text: str, lang: str, match: Match,
                     handoff: Handoff, live: bool = True,
                     retrieval: Retrieval | None = None) -> AsyncIterator[str | Outcome]:
        """Grounded answer from the model, streamed. NO_ANSWER, a failing model or a reply
        that leaks the instructions end as a handoff / a safe reply instead. A model stream
        that fails before any of its text was shown is tried once more (the fleet routes the
        retry around a worker that just failed)."""
        if self.model is None:
            yield await handoff(lang, HandoffReason.LOW_CONFIDENCE, None, match.confidence)
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
                    yield await handoff(lang, HandoffReason.MODEL_UNAVAILABLE,
                                              match.intent, match.confidence)
                    return
                log.warning("model path failed before any text was shown (%s); retrying",
                            exc.message)
        reply = "".join(parts).strip()
        if not reply or NO_ANSWER in reply:
            yield await handoff(lang, HandoffReason.LOW_CONFIDENCE, None, match.confidence)
            return
        system = (system_prompt(shop.persona, shop.name, lang, facts) if retrieval is None
                  else document_rules(shop.name, lang))  # quoting a passage is no leak
        if leaks_system_prompt(reply, system):
            log.warning("model reply repeated its instructions; replaced")
            safe = self.kb.answer(HUMAN_INTENT, lang) or self.kb.answer(HUMAN_INTENT, "en") or ""
            yield Outcome(safe, Source.MODEL, None, match.confidence, None, cacheable=False)
            return
        if retrieval is not None:
            yield Outcome(self.trim_to_language(reply, lang), Source.DOCUMENT, None,
                           match.confidence, None, sources=tuple(retrieval.sources()))
            return
        yield Outcome(reply, Source.MODEL, None, match.confidence, None)

    def trim_to_language(self, reply: str, lang: str) -> str:
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
