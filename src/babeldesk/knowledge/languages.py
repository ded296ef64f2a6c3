"""The language codes babeldesk accepts, shared by the knowledge base (which validates its
files against them) and support's detector and lock (which answer and lock only these)."""

from __future__ import annotations

# ISO 639-1 codes (lid.176's labels) babeldesk accepts: written languages lid.176 was
# trained on (accuracy for 24 of them on the demo KB: docs/benchmarks.md). Knowledge-base
# files and explicit request codes must use these; the lock only locks to these.
# fmt: off
SUPPORTED_LANGUAGES: frozenset[str] = frozenset([
    "af", "am", "ar", "az", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de", "el", "en",
    "eo", "es", "et", "eu", "fa", "fi", "fr", "ga", "gl", "gu", "he", "hi", "hr", "hu", "hy",
    "id", "is", "it", "ja", "ka", "kk", "km", "kn", "ko", "lt", "lv", "mk", "ml", "mn", "mr",
    "ms", "my", "ne", "nl", "no", "pa", "pl", "ps", "pt", "ro", "ru", "si", "sk", "sl", "sq",
    "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "uz", "vi", "zh",
])
# fmt: on
