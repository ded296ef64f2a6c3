"""The session's language lock: which language to answer a message in, and when the
session locks to a language or switches.

The lock is a small pure state machine (``LanguageLock.step``), no I/O, no clock:

- An explicit ``language`` in the request wins: it is validated (``InvalidRequest`` naming
  the code), replies use it and the session locks to it.
- Before the lock: a *sure* message (long enough, confident enough, a supported language)
  locks the session. An unsure one is answered in the chat page's language when there is
  one (a one-word "hi" is Catalan to the word lists, "ok" Polish), else in its detected
  language when the detector is at least ``guess_confidence`` sure and the message
  weighs at least ``guess_weight``, else in ``default_language``; nothing is locked.
- Once locked, unsure messages ("ok", "thanks", "123", emoji, a pasted order number) carry
  no evidence and leave the state unchanged. A sure message in another language switches
  at once when it is *long* (``switch_weight``) and very confident; otherwise it becomes
  ``pending`` and a second sure message in that same language switches. A sure message in
  the locked language clears ``pending``. So one short foreign phrase never flips the
  conversation, and a customer who really changes language is followed within two turns.
  A message in a language close to the locked one (Indonesian in a Malay session, Slovak
  in a Czech one: ``CLOSE_LANGUAGES``) counts as the locked language.
- Before the lock, a message is detected together with the customer's last earlier
  messages (``with_earlier``): two short messages are more evidence than one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from babeldesk.support.language import (
    SUPPORTED_LANGUAGES,
    Detection,
    normalize_language_code,
)


# Written languages close enough that a customer reads either, and that the detector
# cannot always tell apart (a formal Malay sentence is often word for word Indonesian):
# a message detected in one of them keeps a session locked to another.
CLOSE_LANGUAGES: tuple[frozenset[str], ...] = (
    frozenset({"id", "ms"}), frozenset({"cs", "sk"}), frozenset({"hr", "sr", "bs"}),
    frozenset({"da", "no"}),
)


def _close(a: str, b: str) -> bool:
    return any(a in group and b in group for group in CLOSE_LANGUAGES)


class LockReason(str, enum.Enum):
    EXPLICIT = "explicit"  # the request named the language
    LOCKED = "locked"  # the session's locked language
    LOCKED_NOW = "locked_now"  # this message locked the session
    SWITCHED = "switched"  # the customer clearly changed language
    GUESS = "guess"  # not locked yet; the detector's best guess for this message
    LOCALE = "locale"  # not locked yet, an unsure message: the chat page's language
    DEFAULT = "default"  # not locked yet and no usable guess


@dataclass(frozen=True, slots=True)
class LockPolicy:
    min_weight: int = 12  # a message at least this heavy (see text_weight) can lock
    min_confidence: float = 0.80  # ... when the detector is at least this sure
    switch_weight: int = 40  # one message this heavy and this sure switches at once
    switch_confidence: float = 0.90
    guess_confidence: float = 0.50  # before the lock: below this, answer in default_language
    guess_weight: int = 3  # ... and a message lighter than this ("hi", "ok") is no guess
    default_language: str = "en"

    def __post_init__(self) -> None:
        if self.min_weight < 1 or self.switch_weight < self.min_weight:
            raise ValueError("LockPolicy: need 1 <= min_weight <= switch_weight")
        if not 0 <= self.guess_weight <= self.min_weight:
            raise ValueError("LockPolicy: need 0 <= guess_weight <= min_weight")
        for value in (self.min_confidence, self.switch_confidence, self.guess_confidence):
            if not 0.0 <= value <= 1.0:
                raise ValueError("LockPolicy: confidences are in [0, 1]")
        if self.default_language not in SUPPORTED_LANGUAGES:
            raise ValueError(f"LockPolicy: unsupported default_language {self.default_language!r}")


@dataclass(frozen=True, slots=True)
class LockState:
    """Per-session language state; stored with the session. Invariant: pending != locked."""

    locked: str | None = None  # the session's language once sure
    pending: str | None = None  # a sure message in another language awaiting confirmation


class LockDecision(NamedTuple):
    language: str  # reply in this language
    state: LockState  # the session's next state
    reason: LockReason


class LanguageLock:
    """The pure transition function of the session language lock (see the module doc)."""

    def __init__(self, policy: LockPolicy | None = None) -> None:
        self.policy = policy or LockPolicy()

    def is_sure(self, detection: Detection, weight: int) -> bool:
        p = self.policy
        return (
            detection.language in SUPPORTED_LANGUAGES
            and weight >= p.min_weight
            and detection.confidence >= p.min_confidence
        )

    def step(
        self,
        state: LockState,
        detection: Detection,
        weight: int,
        explicit: str | None = None,
        locale: str | None = None,
    ) -> LockDecision:
        """Next state for one customer message. ``weight`` is ``text_weight(message)``;
        ``explicit`` is the request's ``language`` field (validated here); ``locale`` the
        chat page's language (a supported code or None), which answers an unsure message
        before the lock."""
        p = self.policy
        if explicit is not None:
            code = normalize_language_code(explicit)
            return LockDecision(code, LockState(locked=code), LockReason.EXPLICIT)

        lang = detection.language
        sure = self.is_sure(detection, weight)
        if state.locked is None:
            if sure:
                return LockDecision(lang, LockState(locked=lang), LockReason.LOCKED_NOW)
            if locale in SUPPORTED_LANGUAGES:
                return LockDecision(str(locale), state, LockReason.LOCALE)
            if (lang in SUPPORTED_LANGUAGES and detection.confidence >= p.guess_confidence
                    and weight >= p.guess_weight):
                return LockDecision(lang, state, LockReason.GUESS)
            return LockDecision(p.default_language, state, LockReason.DEFAULT)

        if not sure:
            return LockDecision(state.locked, state, LockReason.LOCKED)
        if lang == state.locked or _close(lang, state.locked):
            return LockDecision(state.locked, replace(state, pending=None), LockReason.LOCKED)
        strong = weight >= p.switch_weight and detection.confidence >= p.switch_confidence
        if strong or state.pending == lang:
            return LockDecision(lang, LockState(locked=lang), LockReason.SWITCHED)
        return LockDecision(state.locked, replace(state, pending=lang), LockReason.LOCKED)


class _Turn(Protocol):  # store.base.Turn
    @property
    def role(self) -> str: ...
    @property
    def text(self) -> str: ...


EARLIER_TURNS = 2  # before the lock, a message is read with this many earlier ones


def with_earlier(turns: Sequence[_Turn], text: str, n: int = EARLIER_TURNS) -> str:
    """What to detect a message's language on before the session is locked: the
    customer's last ``n`` earlier messages and this one, as one text. Short messages are
    weak evidence alone and stronger together ("alo shop", then "ship?": Vietnamese; the
    second alone reads as English). Once locked, the lock and its prior take over."""
    earlier = [t.text for t in turns if t.role == "user"][-n:] if n > 0 else []
    return " ".join([*earlier, text]) if earlier else text
