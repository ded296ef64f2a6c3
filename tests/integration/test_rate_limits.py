"""Rate limits that hold across replicas (issue 14): two real ``babeldesk serve``
processes share one real Redis as their limit storage, and a client alternating between
them gets exactly the configured number of requests in total, not that many per process
(the LiteLLM bug, BerriAI/litellm #2730): per client IP, per session and per operator
key. A refused request is 429 ``rate_limit_error`` with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import WorkerProcess, start_worker
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.slow

KEY = "ops-key-0123456789abcdef"
GEN = "gen-key-0123456789abcdef"  # a second operator key, for the token limit
IP_LIMIT, SESSION_LIMIT, KEY_LIMIT, KEY_TOKENS = 5, 3, 4, 10


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ...]]:
    tmp = tmp_path_factory.mktemp("limits")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis")
    redis.start()
    keys = tmp / "keys.yaml"
    keys.write_text(f"keys: [{{name: ops, key: {KEY}, scopes: ['*']}}, "
                    f"{{name: gen, key: {GEN}, scopes: [chat]}}]")
    env = {"BABELDESK_LIMITS_STORAGE_URL": redis.url,
           "BABELDESK_LIMITS_IP_MESSAGES": f"{IP_LIMIT}/minute",
           "BABELDESK_LIMITS_SESSION_MESSAGES": f"{SESSION_LIMIT}/minute",
           "BABELDESK_LIMITS_KEY_REQUESTS": f"{KEY_LIMIT}/minute",
           "BABELDESK_LIMITS_FORWARDED_FOR": "true",  # as behind the deployment's nginx
           "BABELDESK_LIMITS_KEY_TOKENS": f"{KEY_TOKENS}/minute",
           "BABELDESK_GATEWAY_KEYS_FILE": str(keys), "BABELDESK_SUPPORT_DOCS": "false"}
    args = ["--model", "smollm2-135m", "--sessions", redis.url, "--no-verifier"]
    procs: list[WorkerProcess] = []
    try:
        procs.append(start_worker(tmp, *args, command="serve", env=env))
        procs.append(start_worker(tmp, *args, command="serve", env=env))
        yield tuple(procs)
    finally:
        for p in procs:
            p.stop()
        redis.kill()


def _refused(r: httpx.Response) -> bool:
    if r.status_code != 429:
        assert r.status_code == 200, r.text
        return False
    assert r.json()["error"]["type"] == "rate_limit_error", r.text
    assert 1 <= int(r.headers["retry-after"]) <= 60
    return True


def _say(url: str, ip: str, sid: str | None = None) -> httpx.Response:
    body = {"message": "How long does delivery take?", **({"session_id": sid} if sid else {})}
    return httpx.post(url + "/v1/support/messages", json=body, timeout=120,
                      headers={"x-forwarded-for": f"198.51.100.7, {ip}"})


def test_one_ip_limit_across_two_gateways(pair) -> None:
    got = [_refused(_say(pair[i % 2].url, "203.0.113.1")) for i in range(2 * IP_LIMIT)]
    assert got == [False] * IP_LIMIT + [True] * IP_LIMIT
    # another client is not affected
    assert not _refused(_say(pair[0].url, "203.0.113.99"))


def test_one_session_limit_across_two_gateways(pair) -> None:
    sid = _say(pair[0].url, "203.0.113.2").json()["session_id"]  # creates it: no id yet
    # each message from another address, so that only the session's limit can bite
    got = [_refused(_say(pair[i % 2].url, f"203.0.113.{10 + i}", sid))
           for i in range(SESSION_LIMIT + 3)]
    assert got == [False] * SESSION_LIMIT + [True] * 3


def test_one_operator_key_limit_across_two_gateways(pair) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    got = [_refused(httpx.get(pair[i % 2].url + "/v1/models", headers=auth, timeout=30))
           for i in range(KEY_LIMIT + 2)]
    assert got == [False] * KEY_LIMIT + [True] * 2


def test_one_generated_token_limit_across_two_gateways(pair) -> None:
    """8 tokens, then 8 more (started under the limit: 2 of them fill the window of 10),
    then refused on either gateway until the window moves."""
    auth = {"authorization": f"Bearer {GEN}"}
    body = {"max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to fifty in words."}]}
    first = httpx.post(pair[0].url + "/v1/chat/completions", json=body, headers=auth,
                       timeout=120)
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == 8
    assert not _refused(httpx.post(pair[1].url + "/v1/chat/completions", json=body,
                                   headers=auth, timeout=120))
    for url in (pair[0].url, pair[1].url):
        r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth, timeout=120)
        assert _refused(r) and "key tokens" in r.json()["error"]["message"]
