"""Webhook signatures (babeldesk.signing): the pure rules, then a real ``babeldesk
serve`` sending a signed handoff event to a real HTTP receiver, verified on the raw
bytes it received; the same bytes tampered with, or replayed late, are refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from babeldesk.signing import SIGNATURE_HEADER, InvalidSignature, sign, verify
from tests.conftest import WebhookReceiver, start_worker

SECRET = "whsec-0123456789abcdef"
BODY = b'{"type": "handoff.requested", "session_id": "s1"}'


def test_sign_then_verify() -> None:
    header = sign(SECRET, BODY, timestamp=1_800_000_000)
    assert verify(SECRET, BODY, header, now=1_800_000_100) == 1_800_000_000


@pytest.mark.parametrize("body,header,now,words", [
    (BODY.replace(b"s1", b"s2"), None, 1_800_000_000, "does not match"),  # tampered
    (BODY, None, 1_800_000_301, "replay window"),  # too late
    (BODY, None, 1_799_999_699, "replay window"),  # from the future
    (BODY, "v1=abc", 1_800_000_000, "malformed"),
    (BODY, "", 1_800_000_000, "malformed"),
])
def test_refused(body: bytes, header: str | None, now: int, words: str) -> None:
    good = sign(SECRET, BODY, timestamp=1_800_000_000)
    with pytest.raises(InvalidSignature, match=words):
        verify(SECRET, body, good if header is None else header, now=now)


def test_wrong_secret_is_refused() -> None:
    header = sign("another-secret-0123456", BODY, timestamp=1_800_000_000)
    with pytest.raises(InvalidSignature, match="does not match"):
        verify(SECRET, BODY, header, now=1_800_000_000)


@pytest.mark.slow
def test_serve_signs_its_handoff_webhook(
        tmp_path: Path, webhook_receiver: Callable[..., WebhookReceiver]) -> None:
    receiver = webhook_receiver()
    serve = start_worker(tmp_path, "--model", "smollm2-135m", "--sessions", "memory://",
                         "--no-verifier", "--webhook", receiver.url, command="serve",
                         env={"BABELDESK_SUPPORT_WEBHOOK_SECRET": SECRET,
                              "BABELDESK_SUPPORT_DOCS": "false"})
    try:
        r = httpx.post(serve.url + "/v1/support/messages", timeout=120,
                       json={"message": "I want to talk to a human agent, please."})
        assert r.status_code == 200 and r.json()["handoff"], r.text
        assert receiver.wait(1, timeout=10.0), "no webhook arrived"
    finally:
        serve.stop()
    body, headers = receiver.got[0]
    header = headers[SIGNATURE_HEADER.lower()]
    assert json.loads(body)["session_id"] == r.json()["session_id"]
    verify(SECRET, body, header)
    with pytest.raises(InvalidSignature):
        verify(SECRET, body.replace(b"handoff", b"handoft"), header)
    with pytest.raises(InvalidSignature):
        verify(SECRET, body, header, now=verify(SECRET, body, header) + 3600)
