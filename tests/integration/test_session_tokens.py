"""The per-session cap on model-generated tokens (``limits.session_tokens``) on a real
``babeldesk serve``: once a session's model answers have used its tokens, its next
question goes to a person (a handoff, no model call); another session still gets the
model."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import start_worker

pytestmark = pytest.mark.slow


def _say(url: str, message: str, sid: str | None = None) -> dict:
    body = {"message": message, **({"session_id": sid} if sid else {})}
    r = httpx.post(url + "/v1/support/messages", json=body, timeout=180)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_session_past_its_tokens_goes_to_a_person(tmp_path: Path) -> None:
    serve = start_worker(tmp_path, "--model", "smollm2-135m", "--sessions", "memory://",
                         "--no-verifier", command="serve",
                         env={"BABELDESK_LIMITS_SESSION_TOKENS": "4/day",
                              "BABELDESK_SUPPORT_DOCS": "false",
                              "BABELDESK_SUPPORT_REPLY_MAX_TOKENS": "8"})
    try:
        first = _say(serve.url, "Tell me one short fact about volcanoes, please.")
        assert first["source"] == "model", first
        sid = first["session_id"]
        second = _say(serve.url, "And one short fact about the moon, please?", sid)
        assert second["source"] == "handoff", second
        other = _say(serve.url, "Tell me one short fact about penguins, please.")
        assert other["source"] == "model", other
        metrics = httpx.get(serve.url + "/metrics").text
        assert 'babeldesk_rate_limited_total{limit="session_tokens",surface="public"}' in metrics
    finally:
        serve.stop()
