"""Every bad input gets a 4xx OpenAI-style JSON error naming the problem; the worker
keeps serving."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.slow

OK_MSG = [{"role": "user", "content": "hi"}]

CASES = [
    # (name, body bytes or json, status, words expected in the message)
    ("missing messages", {"model": "smollm2-135m"}, 400, ["messages", "required"]),
    ("empty messages", {"messages": []}, 400, ["at least one"]),
    ("wrong role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, ["role", "wizard"]),
    ("no user message", {"messages": [{"role": "system", "content": "be nice"}]}, 400, ["user"]),
    ("empty user message", {"messages": [{"role": "user", "content": "  "}]}, 400, ["user"]),
    ("max_tokens zero", {"messages": OK_MSG, "max_tokens": 0}, 400, ["max_tokens"]),
    ("max_tokens negative", {"messages": OK_MSG, "max_tokens": -5}, 400, ["max_tokens"]),
    ("max_tokens beyond max_model_len", {"messages": OK_MSG, "max_tokens": 5000}, 400,
     ["max_model_len"]),
    ("prompt beyond max_model_len", {"messages": [{"role": "user", "content": "refund " * 1500}]},
     400, ["prompt", "max_model_len"]),
    ("unknown model", {"model": "gpt-9", "messages": OK_MSG}, 404, ["gpt-9"]),
    ("temperature out of range", {"messages": OK_MSG, "temperature": 7}, 400, ["temperature"]),
    ("negative seed", {"messages": OK_MSG, "seed": -1}, 400, ["seed"]),
    ("seed beyond int64", {"messages": OK_MSG, "seed": 2**64}, 400, ["seed"]),
    ("top_p zero", {"messages": OK_MSG, "top_p": 0}, 400, ["top_p"]),
    ("top_p above one", {"messages": OK_MSG, "top_p": 1.5}, 400, ["top_p"]),
    ("temperature negative", {"messages": OK_MSG, "temperature": -0.1}, 400, ["temperature"]),
    ("n > 1", {"messages": OK_MSG, "n": 3}, 400, ["n"]),
    ("body not an object", [1, 2, 3], 400, ["object"]),
    ("malformed json", b'{"messages": [', 400, ["malformed json"]),
    ("empty body", b"", 400, ["empty"]),
    ("invalid utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, ["utf-8"]),
    ("5 MB body", b'{"messages": [{"role": "user", "content": "' + b"a" * 5_000_000 + b'"}]}',
     413, ["limit"]),
]


@pytest.mark.parametrize("name,body,status,words", CASES, ids=[c[0] for c in CASES])
def test_bad_request(smol_worker, name: str, body: object, status: int, words: list[str]) -> None:
    url = smol_worker.url + "/v1/chat/completions"
    if isinstance(body, bytes):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(url, json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] and isinstance(err["message"], str)
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    assert "Traceback" not in r.text
    # still serving
    ok = httpx.post(url, json={"messages": OK_MSG, "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200


def test_unknown_route_and_method_are_json(smol_worker) -> None:
    r = httpx.get(smol_worker.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = httpx.get(smol_worker.url + "/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_health_ready_metrics(smol_worker) -> None:
    assert httpx.get(smol_worker.url + "/health").json()["status"] == "ok"
    assert httpx.get(smol_worker.url + "/ready").status_code == 200
    text = httpx.get(smol_worker.url + "/metrics").text
    for name in ("babeldesk_queue_depth", "babeldesk_batch_size_bucket",
                 "babeldesk_time_to_first_token_seconds_bucket",
                 "babeldesk_inter_token_latency_seconds_bucket", "babeldesk_tokens_generated_total",
                 "babeldesk_request_duration_seconds_bucket"):
        assert name in text
    assert 'babeldesk_requests_total{app="worker",route="/v1/chat/completions",status="400"}' in text
