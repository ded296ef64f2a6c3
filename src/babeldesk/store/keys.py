"""Cache keys and the text normaliser behind model-answer keys.

Two messages share a model-answer key iff they normalise to the same text:
Unicode NFKC (full-width forms, ligatures, compatibility digits), casefold, punctuation
and emoji dropped, whitespace collapsed. Scripts written without spaces between words
(Han, kana, Thai, Lao, Khmer, Myanmar) also lose the spaces next to them, so
"订单 在哪里？" and "订单在哪里" are one key. Word-internal apostrophes vanish
("don't" == "dont"); currency and math symbols stay ("5€" != "5").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from babeldesk.errors import InvalidRequest
from babeldesk.store.base import CacheKey, CacheKind

# Unicode categories dropped: punctuation, other symbols (emoji), modifier symbols,
# format characters (zero-width joiners, bidi marks), control characters.
_DROP = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "So", "Sk", "Cf", "Cc"})
_APOSTROPHES = frozenset("'’ʼ`´")
# Scripts written without spaces between words (code point ranges).
_NO_SPACE = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B..G
)
_SPACES = re.compile(r"\s+")
# text hashes in keys: 128 bits, so a collision is never the reason for a wrong answer
_HASH_HEX = 32


def _no_space_script(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _NO_SPACE)


def normalise_text(text: str) -> str:
    """The form of a customer message that model-answer keys are built from."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out: list[str] = []
    for i, ch in enumerate(text):
        if ch in _APOSTROPHES:
            inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append("" if inside else " ")
        elif unicodedata.category(ch) in _DROP:
            out.append(" ")
        else:
            out.append(ch)
    words = _SPACES.sub(" ", "".join(out)).strip()
    # drop a space when a neighbour belongs to a script written without spaces
    kept: list[str] = []
    for i, ch in enumerate(words):
        if ch == " " and (_no_space_script(words[i - 1]) or _no_space_script(words[i + 1])):
            continue
        kept.append(ch)
    return "".join(kept)


def _part(value: str, name: str) -> str:
    if not value or ":" in value:
        raise InvalidRequest(f"{name} must be non-empty and contain no ':'", param=name)
    return value


def kb_answer_key(intent: str, language: str, kb_version: str) -> CacheKey:
    """A knowledge-base answer (possibly model-translated) for one intent in one language."""
    key = ":".join(
        ("kb", _part(kb_version, "kb_version"), _part(language, "language"), _part(intent, "intent"))
    )
    return CacheKey(CacheKind.KB, key)


def model_answer_key(language: str, text: str, kb_version: str) -> CacheKey:
    """A model answer to a self-contained question. Never use it for a follow-up that
    depends on earlier turns: the key knows nothing of them."""
    digest = hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()[:_HASH_HEX]
    key = ":".join(("model", _part(kb_version, "kb_version"), _part(language, "language"), digest))
    return CacheKey(CacheKind.MODEL, key)
