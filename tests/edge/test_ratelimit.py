"""Rate limits on memory storage: the window, Retry-After, the config's checks and the
client address behind a proxy."""

from __future__ import annotations

import pytest

from babeldesk.config import LimitsConfig, load_config
from babeldesk.edge.ratelimit import Limiter, client_ip
from babeldesk.errors import ConfigError, RateLimited
from babeldesk.telemetry.metrics import Metrics


async def test_moving_window_and_retry_after() -> None:
    metrics = Metrics("gateway")
    limiter = Limiter(LimitsConfig(ip_messages="2/minute", session_messages=""), metrics)
    await limiter.check("ip_messages", "a", "public")
    await limiter.check("ip_messages", "a", "public")
    with pytest.raises(RateLimited) as err:
        await limiter.check("ip_messages", "a", "public")
    assert err.value.status == 429 and 1 <= err.value.retry_after <= 60
    await limiter.check("ip_messages", "b", "public")  # another client
    for _ in range(5):
        await limiter.check("session_messages", "s", "public")  # "" = off
    assert metrics.rate_limited_total.labels("public", "ip_messages")._value.get() == 1


@pytest.mark.parametrize("key,value", [("ip_messages", "lots"), ("storage_url", "mysql://x")])
def test_bad_limits_config_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        load_config(env={f"BABELDESK_LIMITS_{key.upper()}": value})


def test_client_ip_trusts_only_the_last_forwarded_hop() -> None:
    scope = {"client": ("10.0.0.5", 1234),
             "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]}
    assert client_ip(scope, forwarded=False) == "10.0.0.5"
    assert client_ip(scope, forwarded=True) == "203.0.113.9"
    assert client_ip({"client": None, "headers": []}, forwarded=True) == "unknown"


def test_token_count_of_whole_and_streamed_answers() -> None:
    from babeldesk.edge.ratelimit import TokenCount

    whole = TokenCount()
    whole.start({"status": 200, "headers": [(b"content-type", b"application/json")]})
    whole.feed(b'{"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}}')
    assert whole.tokens() == 7
    stream = TokenCount()
    stream.start({"status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    events = [b'data: {"choices": [{"delta": {"role": "assistant", "content": ""}}]}\n\n',
              b'data: {"choices": [{"delta": {"content": "He"}}]}\n\ndata: {"choi',
              b'ces": [{"delta": {"content": "llo \\"x\\""}}]}\n\n', b"data: [DONE]\n\n"]
    for e in events:
        stream.feed(e)
    assert stream.tokens() == 2
    refused = TokenCount()
    refused.start({"status": 400, "headers": []})
    refused.feed(b'{"usage": {"completion_tokens": 5}}')
    assert refused.tokens() == 0
