"""Two surfaces on real processes (issue 14): a ``babeldesk gateway`` with operator keys
(a keys file) and Redis sessions, in front of a ``babeldesk worker`` that requires its
own key (``--api-key``), which the gateway's fleet sends (``BABELDESK_FLEET_API_KEY``).

Asserted: an anonymous client gets 401 on every operator route and a key without the
scope 403; the public surface (chat page in Chromium, support messages, a session by id)
needs no key; no response names an internal address (no ``x-babeldesk-upstream``); the
worker refuses calls without its key; ``/ready`` is 503 while Redis is down, without
exception text, and 200 again once it is back."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import WorkerProcess, start_worker
from tests.contract import fuzz, short_generations
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
OPS = "ops-0123456789abcdef"  # chat, admin, metrics, transcripts
AGENT = "agent-ana-0123456789"  # agent only
WORKER_KEY = "worker-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OPERATOR_ROUTES = [
    ("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 2,
                                      "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/admin/upstreams", None),
    ("GET", "/metrics", None),
    ("GET", "/v1/transcripts", None),
    ("GET", "/v1/transcripts/no-such-session", None),
]


class Stack:
    def __init__(self, worker: WorkerProcess, gateway: WorkerProcess, redis: RedisServer):
        self.worker, self.gateway, self.redis = worker, gateway, redis
        self.internal = ("127.0.0.1:" + str(worker.port), "localhost:" + str(worker.port))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("surfaces")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis")
    redis.start()
    worker = start_worker(tmp, "--model", MODEL, "--max-new-tokens", "8",
                          env={"BABELDESK_WORKER_API_KEY": WORKER_KEY})
    gateway: WorkerProcess | None = None
    try:
        keys = tmp / "keys.yaml"
        keys.write_text(yaml.safe_dump({"keys": [
            {"name": "ops", "key_sha256": hashlib.sha256(OPS.encode()).hexdigest(),
             "scopes": ["chat", "admin", "metrics", "transcripts"]},
            {"name": "ana", "key": AGENT, "scopes": ["agent"]}]}))
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump({"support": {"verifier": False, "docs": False},
                                       "fleet": {"health_interval_s": 0.5}}))
        gateway = start_worker(
            tmp, "-c", str(cfg), "--upstream", worker.url, "--upstream-model", MODEL,
            "--sessions", redis.url, "--no-verifier", command="gateway",
            env={"BABELDESK_GATEWAY_KEYS_FILE": str(keys), "BABELDESK_FLEET_API_KEY": WORKER_KEY})
        yield Stack(worker, gateway, redis)
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()
        redis.kill()


def _call(url: str, method: str, path: str, body: object, key: str | None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=120)


def _no_internal(stack: Stack, r: httpx.Response) -> None:
    assert "x-babeldesk-upstream" not in r.headers
    for addr in stack.internal:
        assert addr not in r.text and addr not in str(r.headers), (addr, r.text[:300])


@pytest.mark.parametrize("method,path,body", OPERATOR_ROUTES, ids=[r[1] for r in OPERATOR_ROUTES])
def test_operator_routes_need_a_key_with_their_scope(stack: Stack, method, path, body) -> None:
    url = stack.gateway.url
    for key in (None, "wrong-key-0123456789"):
        r = _call(url, method, path, body, key)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    r = _call(url, method, path, body, AGENT)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
    r = _call(url, method, path, body, OPS)
    assert r.status_code == (404 if "no-such" in path else 200), r.text
    if path not in ("/v1/admin/upstreams", "/metrics"):  # these name upstreams: operators only
        _no_internal(stack, r)


def test_refusals_are_counted_by_route(stack: Stack) -> None:
    """The edge's refusals pass the same metrics as answers (one middleware stack)."""
    _call(stack.gateway.url, "POST", "/v1/chat/completions", OPERATOR_ROUTES[0][2], None)
    text = _call(stack.gateway.url, "GET", "/metrics", None, OPS).text
    assert ('babeldesk_requests_total{app="gateway",route="/v1/chat/completions",'
            'status="401"}') in text
    assert ('babeldesk_requests_total{app="gateway",route="/v1/admin/*",status="401"}'
            in text)


def test_public_surface_needs_no_key(stack: Stack) -> None:
    url = stack.gateway.url
    assert httpx.get(url + "/").status_code == 200
    r = httpx.post(url + "/v1/support/messages", timeout=120,
                   json={"message": "Tell me one short fact about the moon, please."})
    assert r.status_code == 200, r.text
    _no_internal(stack, r)
    sid = r.json()["session_id"]
    t = httpx.get(f"{url}/v1/support/sessions/{sid}")
    assert t.status_code == 200 and len(t.json()["turns"]) == 2
    assert httpx.delete(f"{url}/v1/support/sessions/{sid}").status_code == 204
    for probe in ("/health", "/ready"):
        assert httpx.get(url + probe).status_code == 200


def test_operators_list_and_read_transcripts(stack: Stack) -> None:
    url = stack.gateway.url
    r = httpx.post(url + "/v1/support/messages", timeout=120,
                   json={"message": "Where is my order? It has not arrived yet."})
    assert r.status_code == 200, r.text
    sid = r.json()["session_id"]
    listed = _call(url, "GET", "/v1/transcripts?limit=500", None, OPS).json()
    mine = [t for t in listed["transcripts"] if t["session_id"] == sid]
    assert len(mine) == 1 and mine[0]["state"] == "bot", listed
    full = _call(url, "GET", f"/v1/transcripts/{sid}", None, OPS).json()
    assert [t["role"] for t in full["turns"]] == ["user", "assistant"]
    assert full["turns"][0]["text"].startswith("Where is my order")
    later = _call(url, "GET", f"/v1/transcripts?since={time.time() + 3600}", None, OPS).json()
    assert later["transcripts"] == []
    for bad in ("since=-1", "limit=0", "limit=x"):
        r = _call(url, "GET", "/v1/transcripts?" + bad, None, OPS)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_gateway_in_front_of_workers_holds_its_contract(stack: Stack) -> None:
    """schemathesis through ``babeldesk gateway`` with an operator key, on what only this
    mode has (the other routes are the app ``serve`` runs, fuzzed in
    tests/gateway/test_fuzz_api.py): the OpenAI passthrough relays the worker's 4xx for
    whatever object it is sent (a client mistake, never a breaker failure)."""
    failures, done = fuzz(stack.gateway.url, prepare=short_generations,
                          headers={"authorization": f"Bearer {OPS}"},
                          skip=lambda label: not label.endswith(("/v1/chat/completions",
                                                                 "/v1/models")))
    assert done >= 15
    assert not failures, "\n\n".join(failures)
    ups = _call(stack.gateway.url, "GET", "/v1/admin/upstreams", None, OPS).json()["upstreams"]
    for upstream in ups:  # no breaker opened on a client mistake
        assert upstream["state"] == "closed" and upstream["usable"], upstream


def test_the_contract_is_public(stack: Stack) -> None:
    doc = httpx.get(stack.gateway.url + "/openapi.json").json()
    for path in ("/v1/support/messages", "/v1/chat/completions", "/v1/transcripts",
                 "/v1/agent/queue", "/v1/admin/upstreams"):
        assert path in doc["paths"], path


def test_the_worker_wants_its_key(stack: Stack) -> None:
    body = OPERATOR_ROUTES[0][2]
    r = httpx.post(stack.worker.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 401
    r = httpx.post(stack.worker.url + "/v1/chat/completions", json=body, timeout=60,
                   headers={"authorization": f"Bearer {WORKER_KEY}"})
    assert r.status_code == 200
    assert httpx.get(stack.worker.url + "/ready").status_code == 200  # probes need none


def test_an_upstream_failure_names_no_address(stack: Stack) -> None:
    """A 4xx from the worker relayed, and a 503 when no worker answers, say nothing of
    where the workers are."""
    r = _call(stack.gateway.url, "POST", "/v1/chat/completions",
              {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, OPS)
    assert r.status_code == 404
    _no_internal(stack, r)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed")
def test_chat_page_works_with_operator_keys_on(stack: Stack) -> None:
    from playwright.sync_api import sync_playwright

    from tests.gateway.test_chat_page import FLAGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(stack.gateway.url + "/")
            page.fill("#input", "How long does delivery take?")
            page.click("#send")
            reply = page.locator(".msg.bot").last
            reply.locator(".badge").wait_for(timeout=120_000)
            assert reply.get_attribute("data-source") == "knowledge_base"
        finally:
            browser.close()


def test_ready_fails_while_the_session_store_is_down(stack: Stack) -> None:
    url = stack.gateway.url
    assert httpx.get(url + "/ready").status_code == 200
    stack.redis.kill()
    try:
        r = httpx.get(url + "/ready", timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json() == {"status": "session store unreachable"}
    finally:
        stack.redis.start()
    for _ in range(100):
        if httpx.get(url + "/ready", timeout=30).status_code == 200:
            break
    else:
        raise AssertionError("not ready again after Redis came back")
