"""Word evidence for language detection: how typical each word of a message is of each
language, with accents folded away (customers type "khong", "objednavka", "siparisim").

fastText's character model (``language.py``) was trained on carefully accented text; it
reads Vietnamese without tones as Dutch, romanized Hindi as English, Czech without
háčky as Polish. A word list does not care about accents once both sides are folded.

Sources, merged per folded word into a frequency per language:

- wordfreq's "small" lists (a maintained multi-source frequency table: Wikipedia,
  subtitles, news, web text, social media; 42 languages), words down to ``10**-5.5``;
- the product lexicon ``data/language_lexicon.yaml`` (romanized Hindi, Swahili, chat
  spellings), each word counted at ``HAND_FREQUENCY``;
- the shop's own vocabulary (the KB's examples and answers per language), at
  ``VOCABULARY_FREQUENCY``, passed in by whoever builds the detector.

The evidence of a word for language L is ``log(f_L / mean f)`` over the languages that
have a list (``f`` floored at ``FLOOR``; the log clipped to ``[-NEGATIVE_CAP,
POSITIVE_CAP]``): a word common everywhere ("a", "no") says nothing, a word of a few
languages counts for them and against the others, an unknown word (a typo, an order
number) for nobody.
Languages without a list get 0, or borrow a close language's list (``PROXY``).

The merged wordfreq + lexicon table (~620k folded words) takes ~3 s to build; it is
cached as a ~6 MB ``.npz`` (sorted crc32 hashes, per-word (language, centibel) entries)
under ``~/.cache/babeldesk/language/``, keyed by wordfreq's version and the lexicon's
hash, and shared by every detector of the process.
"""

from __future__ import annotations

import array
import functools
import hashlib
import importlib.metadata
import logging
import math
import os
import re
import unicodedata
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

log = logging.getLogger(__name__)

LEXICON_FILE = "language_lexicon.yaml"
LOANWORDS = "loanwords"  # the lexicon's list of words that speak for no language
MIN_FREQUENCY_CB = 550  # wordfreq words down to 10**-5.5 (centibels: -100 * log10 f)
HAND_FREQUENCY = 1e-3  # a product-lexicon word counts as a common word
VOCABULARY_FREQUENCY = 1e-4  # a word of the shop's KB in that language
FLOOR = 1e-7  # the frequency of a word a language's list lacks
NEGATIVE_CAP = 8.0  # nats: the most one word can count against a language
POSITIVE_CAP = 3.0  # nats: the most one word can count for a language (its share is what counts)
_FORMAT = 2  # bump when the table layout or its build rules change

# wordfreq's labels -> supported codes; "sh" (Serbo-Croatian) only lends its list.
_WORDFREQ_CODES = {"fil": "tl", "nb": "no"}
# Languages without a list of their own borrow a close one's (built before the product
# lexicon, so romanized Hindi stays Hindi's alone): without it a Galician message loses
# against Portuguese's word evidence though fastText knows Galician.
PROXY = {"af": "nl", "gl": "pt", "az": "tr", "uz": "tr", "be": "uk", "mr": "hi", "ne": "hi",
         "et": "fi", "hr": "sh", "sr": "sh", "bs": "sh"}  # fmt: skip

# Supported languages written in Latin letters whose only list is the product lexicon
# (wordfreq ships none; a test checks): a word their short list lacks is no evidence
# against them, so only the words it has count (language.py).
LEXICON_ONLY = frozenset({"sw", "eu"})

# a word: letters, with digits inside it kept (Arabizi "3andi", "sa3dni"); digits alone
# (an order number, a price) are no word
_WORD = re.compile(r"[^\W_]*[^\W\d_][^\W_]*")
_SPECIAL = str.maketrans({"đ": "d", "ł": "l", "ı": "i", "ø": "o", "ß": "ss", "æ": "ae",
                          "œ": "oe", "ð": "d", "þ": "th"})  # fmt: skip
_FOLDED_SCRIPTS_END = 0x0530  # Latin, Greek and Cyrillic lose their accents; others keep marks


def fold(word: str) -> str:
    """Lower case without accents: ``Objednávka`` -> ``objednavka``, ``không`` -> ``khong``,
    ``siparişim`` -> ``siparisim``. Marks of other scripts (Devanagari vowel signs) stay."""
    word = word.lower()
    if word.isascii():
        return word
    out: list[str] = []
    for ch in unicodedata.normalize("NFD", word.translate(_SPECIAL)):
        if out and unicodedata.combining(ch) and ord(out[-1]) < _FOLDED_SCRIPTS_END:
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def words(text: str) -> list[str]:
    """The folded words of ``text`` (runs of letters and digits with at least one letter;
    punctuation and spaces split them)."""
    return [fold(w) for w in _WORD.findall(text)]


def _hash(word: str) -> int:
    return zlib.crc32(word.encode("utf-8"))


# centibels -> frequency and its natural log
_FREQUENCY = [10.0 ** (-c / 100.0) for c in range(65536)]
_LOG_FREQUENCY = [-c / 100.0 * math.log(10.0) for c in range(65536)]


def _centibels(f: float) -> int:
    return min(65535, round(-100.0 * math.log10(f)))


@dataclass(frozen=True)  # not slots: _entries is a cached_property
class WordTable:
    """Folded word -> (language, frequency) entries. Arrays: ``keys`` uint32 [K] sorted
    crc32 of the folded words; ``start`` int64 [K+1] offsets into ``lang`` uint8 [E]
    (index into ``languages``) and ``cb`` uint16 [E] (frequency in centibels)."""

    languages: tuple[str, ...]
    keys: np.ndarray
    start: np.ndarray
    lang: np.ndarray
    cb: np.ndarray

    @functools.cached_property
    def _entries(self) -> tuple[bytes, array.array[int]]:
        # plain-Python views: slicing them per token is ~10x cheaper than numpy slices
        return self.lang.tobytes(), array.array("H", self.cb.astype(np.uint16).tobytes())

    def lookup(self, tokens: list[str]) -> list[dict[str, int]]:
        """Per token, its frequency (centibels) in each language that lists it (empty:
        unknown)."""
        if not tokens:
            return []
        hashes = np.fromiter((_hash(t) for t in tokens), dtype=np.uint32, count=len(tokens))
        rows = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        found = (self.keys[rows] == hashes).tolist()
        starts, ends = self.start[rows].tolist(), self.start[rows + 1].tolist()
        langs, cbs = self._entries
        names = self.languages
        return [dict(zip([names[i] for i in langs[a:b]], cbs[a:b])) if ok else {}
                for ok, a, b in zip(found, starts, ends)]


@functools.lru_cache(maxsize=1)
def _lexicon_file() -> dict[str, tuple[str, ...]]:
    text = resources.files("babeldesk").joinpath("data", LEXICON_FILE).read_text("utf-8")
    data = yaml.safe_load(text) or {}
    return {str(key): tuple(str(value).split()) for key, value in data.items()}


def lexicon_words() -> dict[str, list[str]]:
    """The product lexicon: language -> words, as written in ``data/language_lexicon.yaml``."""
    return {lang: list(items) for lang, items in _lexicon_file().items() if lang != LOANWORDS}


def loanwords() -> frozenset[str]:
    """The shop's loanwords (folded): words customers of every language type for the
    shop's things ("refund", "tracking", "cod"), no evidence for or against a language."""
    return frozenset(w for item in _lexicon_file().get(LOANWORDS, ()) for w in words(item))


def vocabulary_of(texts: Mapping[str, Iterable[str]]) -> dict[str, dict[str, int]]:
    """A shop's vocabulary overlay: folded word -> {language: centibels of
    VOCABULARY_FREQUENCY} from texts per language (a KB's examples and answers)."""
    cb = _centibels(VOCABULARY_FREQUENCY)
    overlay: dict[str, dict[str, int]] = {}
    for lang, items in texts.items():
        for text in items:
            for w in words(text):
                overlay.setdefault(w, {})[lang] = cb
    return overlay


class WordEvidence:
    """Per-language word evidence of a message (nats), from a ``WordTable`` and an
    optional vocabulary overlay (``vocabulary_of``), merged by the higher frequency.
    Each word's evidence is computed once and kept (``cache_size`` words: customers'
    words repeat far more than their messages do)."""

    def __init__(self, table: WordTable, overlay: Mapping[str, Mapping[str, int]] | None = None,
                 positive_cap: float = POSITIVE_CAP, cache_size: int = 65536,
                 neutral: frozenset[str] = frozenset()) -> None:
        self.table = table
        self.neutral = neutral  # words that are no evidence (``loanwords()``)
        self.overlay = overlay or {}
        self.positive_cap = positive_cap
        self.languages = frozenset(table.languages) | {
            lang for entry in self.overlay.values() for lang in entry}
        self._n = len(self.languages)
        self._word = functools.lru_cache(maxsize=cache_size)(self._evidence)

    def scores(self, tokens: list[str]) -> tuple[float, dict[str, float], dict[str, float]]:
        """The summed evidence of the tokens as ``(base, extra, listed)``: a language with
        a list scores ``base + extra.get(lang, 0)`` (``extra`` holds the languages that
        list some token); a language without a list scores 0 (no evidence either way).
        ``listed[lang]``: the evidence of only the tokens ``lang`` lists (a romanized
        message is no evidence against Persian for the Latin words Persian's list lacks)."""
        total_base = 0.0
        extra: dict[str, float] = {}
        listed: dict[str, float] = {}
        for token in tokens:
            base, deltas = self._word(token)
            total_base += base
            for lang, delta in deltas:
                extra[lang] = extra.get(lang, 0.0) + delta
                listed[lang] = listed.get(lang, 0.0) + delta + base
        return total_base, extra, listed

    def _evidence(self, token: str) -> tuple[float, tuple[tuple[str, float], ...]]:
        """One word: (evidence for the languages without it, ((language, its evidence
        minus that), ...) for the languages with it)."""
        if token in self.neutral:
            return 0.0, ()
        entry = self.table.lookup([token])[0]
        for lang, cb in self.overlay.get(token, {}).items():
            if cb < entry.get(lang, 65536):
                entry[lang] = cb
        if not entry:
            return 0.0, ()  # unknown everywhere: no evidence
        n, cap, low = self._n, self.positive_cap, -NEGATIVE_CAP
        log_mean = math.log((sum(_FREQUENCY[c] for c in entry.values()) + n * FLOOR) / n)
        base = max(math.log(FLOOR) - log_mean, low)
        return base, tuple((lang, min(max(_LOG_FREQUENCY[c] - log_mean, low), cap) - base)
                           for lang, c in entry.items())


# ---- building and caching the table ------------------------------------------------------


def _cache_dir() -> Path:
    root = os.environ.get("BABELDESK_CACHE_DIR") or Path.home() / ".cache" / "babeldesk"
    return Path(root) / "language"


def _build(supported: frozenset[str], lexicon: Mapping[str, list[str]]) -> WordTable:
    import wordfreq  # only when (re)building: ~0.2 s to import

    freqs: dict[str, dict[str, float]] = {}

    def add(word: str, lang: str, f: float) -> None:
        entry = freqs.setdefault(word, {})
        if f > entry.get(lang, 0.0):
            entry[lang] = f

    sources = sorted(wordfreq.available_languages(wordlist="small"))
    for code in sources:
        lang = _WORDFREQ_CODES.get(code, code)
        if lang not in supported and lang not in PROXY.values():
            continue
        for cb, group in enumerate(wordfreq.get_frequency_list(code, "small")[:MIN_FREQUENCY_CB]):
            f = 10.0 ** (-cb / 100.0)
            for word in group:
                for w in words(word):
                    add(w, lang, f)
    for entry in freqs.values():
        for lang, source in PROXY.items():
            if source in entry and lang not in entry:
                entry[lang] = entry[source]
        for source in set(PROXY.values()) - supported:
            entry.pop(source, None)
    for lang, items in lexicon.items():
        for word in items:
            for w in words(word):
                add(w, lang, HAND_FREQUENCY)

    languages = tuple(sorted({lang for entry in freqs.values() for lang in entry}))
    index = {lang: i for i, lang in enumerate(languages)}
    merged: dict[int, dict[str, float]] = {}
    for word, entry in freqs.items():  # crc32 collisions (~50 of 620k) merge by maximum
        into = merged.setdefault(_hash(word), {})
        for lang, f in entry.items():
            into[lang] = max(into.get(lang, 0.0), f)
    keys = np.array(sorted(merged), dtype=np.uint32)
    start = np.zeros(len(keys) + 1, dtype=np.int64)
    langs: list[int] = []
    cbs: list[int] = []
    for i, key in enumerate(keys.tolist()):
        for lang, f in sorted(merged[key].items()):
            langs.append(index[lang])
            cbs.append(_centibels(f))
        start[i + 1] = len(langs)
    return WordTable(languages, keys, start, np.array(langs, dtype=np.uint8),
                     np.array(cbs, dtype=np.uint16))


@functools.lru_cache(maxsize=2)  # one table per process: every detector shares it
def load_word_table(supported: frozenset[str]) -> WordTable:
    """The wordfreq + product-lexicon table for ``supported`` languages, from the cache
    when it holds this exact build, else built (~3 s) and cached atomically."""
    lexicon = lexicon_words()
    digest = hashlib.sha256(repr((_FORMAT, MIN_FREQUENCY_CB, HAND_FREQUENCY, sorted(supported),
                                  sorted(PROXY.items()), sorted(lexicon.items()),
                                  importlib.metadata.version("wordfreq"))).encode()).hexdigest()
    path = _cache_dir() / f"words-{digest[:16]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                return WordTable(tuple(str(x) for x in data["languages"]), data["keys"],
                                 data["start"], data["lang"], data["cb"])
        except (OSError, ValueError, KeyError):
            log.warning("language word table %s unreadable; rebuilding", path)
    table = _build(supported, lexicon)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, languages=np.array(table.languages), keys=table.keys, start=table.start,
                 lang=table.lang, cb=table.cb)
        os.replace(tmp, path)  # atomic: two processes starting together never see half a file
    except OSError as exc:
        log.warning("cannot cache the language word table at %s: %s", path, exc)
    return table
