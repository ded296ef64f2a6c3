"""Cache keys and the text normaliser behind model-answer keys.

Two messages share a model-answer key iff they normalise to the same text:
Unicode NFKC (full-width forms, ligatures, compatibility digits), casefold, punctuation
and emoji dropped, whitespace collapsed. Scripts written without spaces between words
(Han, kana, Thai, Lao, Khmer, Myanmar) also lose the spaces next to them, so
"订单 在哪里？" and "订单在哪里" are one key. Word-internal apostrophes vanish
("don't" == "dont"); currency and math symbols stay ("5€" != "5").
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import time
import unicodedata
from collections.abc import Sequence

from babeldesk.errors import InvalidRequest
from babeldesk.store.base import CacheKey, CacheKind

# Unicode categories dropped: punctuation, other symbols (emoji), modifier symbols,
# format characters (zero-width joiners, bidi marks), control characters.
_DROP = frozenset({"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "So", "Sk", "Cf", "Cc"})
_INNER_APOSTROPHE = re.compile(r"(?<=\w)['’ʼ`´](?=\w)")
# Scripts written without spaces between words, as a regex character class.
_NO_SPACE = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u2e80-\u2fdf"  # CJK radicals
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u31f0-\u31ff"  # Katakana extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B..G
)
_SPACE_NEXT_TO_NO_SPACE = re.compile(f" (?=[{_NO_SPACE}])|(?<=[{_NO_SPACE}]) ")
_SPACES = re.compile(r"\s+")
# text hashes in keys: 128 bits, so a collision is never the reason for a wrong answer
_HASH_HEX = 32


class _DropTable(dict[int, str]):
    """``str.translate`` table: dropped categories -> space, others -> themselves; filled
    lazily, one ``unicodedata.category`` call per distinct code point (a pure function's
    memo, bounded by the code points seen)."""

    def __missing__(self, cp: int) -> str:
        ch = chr(cp)
        value = " " if unicodedata.category(ch) in _DROP else ch
        self[cp] = value
        return value


_TABLE = _DropTable()


@functools.lru_cache(maxsize=4096)  # pure; the same questions recur
def normalise_text(text: str) -> str:
    """The form of a customer message that model-answer keys are built from."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _INNER_APOSTROPHE.sub("", text).translate(_TABLE)
    text = _SPACES.sub(" ", text).strip()
    return _SPACE_NEXT_TO_NO_SPACE.sub("", text)


def new_session_id() -> str:
    """32 hex characters: the time in milliseconds (12), then 80 random bits (20). Ordered
    by creation time, so a new session's rows land at the end of the stores' indexes
    (a few pages per commit) instead of on a random page each, and as hard to guess as a
    token should be."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


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


def document_answer_key(language: str, text: str, prompt_version: str,
                        chunk_hashes: Sequence[str]) -> CacheKey:
    """A model answer grounded in help-center passages. ``chunk_hashes``: the passages
    the prompt quoted (``knowledge.documents.Chunk.hash``), so editing one article
    section invalidates exactly the answers built on it; ``prompt_version``: whatever
    else the prompt holds (the shop's name and persona). First messages only, as
    ``model_answer_key``."""
    digest = hashlib.sha256(normalise_text(text).encode("utf-8"))
    for h in sorted(chunk_hashes):
        digest.update(b"\x00" + h.encode("ascii"))
    key = ":".join(("doc", _part(prompt_version, "prompt_version"), _part(language, "language"),
                    digest.hexdigest()[:_HASH_HEX]))
    return CacheKey(CacheKind.DOCUMENT, key)
