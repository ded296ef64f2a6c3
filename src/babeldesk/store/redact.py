"""Redaction of personal data in stored transcripts (and logs), never in the reply the
customer sees.

- e-mail addresses, Unicode local parts and domains included -> ``[email]``
- payment card numbers: 13-19 digits, optionally grouped by spaces or dashes, that pass
  the Luhn check (so order numbers and dates stay readable) -> ``[card]``
- phone numbers -> ``[phone]``: found by ``phonenumbers`` (Google's libphonenumber
  metadata; phone formats are a library's job). International numbers written with ``+``
  are found in any text; national formats (``06 12 34 56 78``, ``090-1234-5678``) and the
  ``00`` prefix only for the regions configured, since without a region a national number
  cannot be told from an order number.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import replace

import phonenumbers
from phonenumbers import Leniency, PhoneNumberMatcher

from babeldesk.errors import ConfigError
from babeldesk.store.base import Turn

EMAIL = "[email]"
CARD = "[card]"
PHONE = "[phone]"

_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# 13..19 digits, single space / no-break space / dash between groups; \d is any script's digits
_CARD_RE = re.compile(r"(?<!\d)(?:\d[ \u00a0-]?){12,18}\d(?!\d)")
_PLUS = ("+", "\uff0b")  # an international number starts with one of these
CACHED_TEXTS = 4096  # texts whose redaction is remembered (replies and questions recur)
CACHED_MAX_CHARS = 2000


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a string of decimal digits (any script)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = unicodedata.digit(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 13 and total % 10 == 0


class Redactor:
    """``redact(text)`` replaces personal data with placeholders. Pure; safe to share."""

    def __init__(self, phone_regions: tuple[str, ...] = ()) -> None:
        supported = phonenumbers.SUPPORTED_REGIONS
        for region in phone_regions:
            if region.upper() not in supported:
                raise ConfigError("store.redact_phone_regions", f"unknown region {region!r}")
        # None: only numbers in international format (+CC ...)
        self._regions: tuple[str | None, ...] = (None, *(r.upper() for r in phone_regions))
        # pure function of the text: the same reply or question is redacted once
        self._cached = functools.lru_cache(maxsize=CACHED_TEXTS)(self._redact)

    def redact(self, text: str) -> str:
        return self._cached(text) if len(text) <= CACHED_MAX_CHARS else self._redact(text)

    def _redact(self, text: str) -> str:
        text = _EMAIL_RE.sub(EMAIL, text)
        text = _CARD_RE.sub(self._card, text)
        for region in self._regions:
            text = self._phones(text, region)
        return text

    def turn(self, turn: Turn) -> Turn:
        redacted = self.redact(turn.text)
        return turn if redacted == turn.text else replace(turn, text=redacted)

    @staticmethod
    def _card(match: re.Match[str]) -> str:
        digits = "".join(ch for ch in match.group(0) if ch.isdigit())
        return CARD if luhn_ok(digits) else match.group(0)

    @staticmethod
    def _phones(text: str, region: str | None) -> str:
        # "+CC ..." carries its country: a possible number is enough. A national number is
        # only taken when valid for the region, so dates and order numbers stay.
        if region is None and not any(p in text for p in _PLUS):
            return text  # without a region only "+CC ..." numbers can be found
        leniency = Leniency.POSSIBLE if region is None else Leniency.VALID
        spans = []
        for m in PhoneNumberMatcher(text, region, leniency):
            lead = len(m.raw_string) - len(m.raw_string.lstrip())
            spans.append((m.start + lead, m.end))
        for start, end in reversed(spans):  # right to left keeps earlier offsets valid
            text = text[:start] + PHONE + text[end:]
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's rendered message, so customer text in
    logs carries no e-mail, phone or card number: ``handler.addFilter(RedactingFilter(r))``."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redactor.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
