"""A client's bad sampling parameters (``{"seed": -1}`` and friends) are a 4xx JSON error
on a real worker, through a real ``babeldesk gateway`` and on ``babeldesk serve``, and
never count against a worker's circuit breaker: a burst of them, more than
``breaker_failures``, leaves the fleet serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import WorkerProcess, start_worker
from tests.integration.test_chaos import admin, upstream_metrics

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
BREAKER_FAILURES = 3
OK = [{"role": "user", "content": "Say hi."}]
BAD = [
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"top_p": 0}, "top_p"),
    ({"temperature": 3}, "temperature"),
    ({"max_tokens": -1}, "max_tokens"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    tmp: Path = tmp_path_factory.mktemp("client-errors")
    worker = start_worker(tmp, "--model", MODEL, "--max-new-tokens", "8")
    gateway: WorkerProcess | None = None
    try:
        cfg = tmp / "gateway.yaml"
        cfg.write_text(yaml.safe_dump({
            "fleet": {"breaker_failures": BREAKER_FAILURES, "health_interval_s": 0},
            "support": {"verifier": False, "docs": False}}))
        gateway = start_worker(tmp, "-c", str(cfg), "--upstream", worker.url,
                               "--upstream-model", MODEL, "--sessions", "memory://",
                               "--no-verifier", command="gateway")
        yield worker, gateway
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()


def _assert_client_error(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and param in err["message"], err
    assert "Traceback" not in r.text and "numpy" not in r.text.lower()


@pytest.mark.parametrize("extra,param", BAD, ids=[str(b[0]) for b in BAD])
def test_worker_and_gateway_answer_400(stack, extra, param) -> None:
    worker, gateway = stack
    for url in (worker.url, gateway.url):
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": OK, "max_tokens": 2, **extra})
        _assert_client_error(r, param)


def test_a_burst_of_bad_seeds_is_no_breaker_failure(stack) -> None:
    worker, gateway = stack
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for stream in (False, True) * (2 * BREAKER_FAILURES):
            r = client.post("/v1/chat/completions", json={
                "model": MODEL, "messages": OK, "seed": -1, "stream": stream})
            _assert_client_error(r, "seed")
        up = admin(gateway.url)[worker.url]
        assert up["state"] == "closed" and up["usable"], up
        assert up["consecutive_failures"] == 0, up
        _, outcomes = upstream_metrics(gateway.url, worker.url)
        assert outcomes["client_error"] >= 4 * BREAKER_FAILURES, outcomes
        assert outcomes["server_error"] == 0, outcomes
        ok = client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": OK, "max_tokens": 2, "seed": 7, "temperature": 0.8})
        assert ok.status_code == 200, ok.text


def test_serve_answers_400(tmp_path: Path) -> None:
    serve = start_worker(tmp_path, "--model", MODEL, "--sessions", "memory://",
                         "--no-verifier", command="serve",
                         env={"BABELDESK_SUPPORT_DOCS": "false"})
    try:
        for extra, param in BAD:
            r = httpx.post(serve.url + "/v1/chat/completions", timeout=60,
                           json={"messages": OK, "max_tokens": 2, **extra})
            _assert_client_error(r, param)
    finally:
        assert serve.stop() == 0
