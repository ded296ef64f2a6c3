"""Signed webhooks: HMAC-SHA256 over ``<timestamp>.<body>``, as Stripe and Slack sign
theirs, so a help desk can tell babeldesk's events from anyone else's and refuse a
replayed one.

The header ``X-Babeldesk-Signature: t=<unix seconds>,v1=<hex digest>`` goes with every
delivery (``support.webhook_secret``); each retry is signed afresh. A receiver calls
``verify(secret, raw_body, header)``: it raises ``InvalidSignature`` for a wrong or missing
signature, a changed body, or a timestamp outside ``tolerance_s`` (the replay window).
Verify the raw bytes as received, before parsing the JSON. Pure standard library, so a
receiver can copy this file alone.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Babeldesk-Signature"
TOLERANCE_S = 300  # seconds a signature stays valid either side of the receiver's clock


class InvalidSignature(ValueError):
    """The event is not babeldesk's, was changed, or is outside the replay window."""


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` sent at ``timestamp`` (unix seconds; now if None)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify(secret: str, body: bytes, header: str | None, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> int:
    """Check ``header`` against ``body``; returns its timestamp or raises."""
    if not secret:
        raise InvalidSignature("no secret to verify with")
    fields: dict[str, list[str]] = {}
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise InvalidSignature(f"malformed {SIGNATURE_HEADER} header") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise InvalidSignature(f"timestamp outside the {tolerance_s:g}s replay window")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, v) for v in fields.get("v1", [])):
        raise InvalidSignature("signature does not match the body")
    return timestamp
