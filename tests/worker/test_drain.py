"""SIGTERM during load: in-flight requests complete, new ones are refused, exit code 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.conftest import start_worker

pytestmark = pytest.mark.slow


def test_sigterm_drains_in_flight_and_refuses_new(tmp_path) -> None:
    w = start_worker(tmp_path, "--model", "smollm2-135m", "--max-batch-size", "4",
                     "--drain-grace-s", "60")
    results: list[tuple[str | None, str]] = []
    started = threading.Semaphore(0)  # released once per stream, at its first event

    def stream_one(i: int) -> None:
        body = {"stream": True, "temperature": 0, "max_tokens": 120,
                "messages": [{"role": "user", "content": f"Write a long poem about parcel {i}."}]}
        text, finish, first = "", None, True
        with httpx.stream("POST", w.url + "/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    if first:
                        started.release()
                        first = False
                    chunk = json.loads(line[6:])
                    for ch in chunk["choices"]:
                        text += ch["delta"].get("content") or ""
                        finish = ch["finish_reason"] or finish
        results.append((finish, text))

    threads = [threading.Thread(target=stream_one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    # all six accepted (four generating, two queued: the worker sends the first event of
    # each at once) before the SIGTERM
    assert all(started.acquire(timeout=60) for _ in threads)
    w.proc.send_signal(signal.SIGTERM)
    refused = None
    for _ in range(50):
        try:
            r = httpx.post(w.url + "/v1/chat/completions", timeout=5,
                           json={"messages": [{"role": "user", "content": "hi"}]})
        except httpx.TransportError:
            refused = "connection refused"
            break
        if r.status_code == 503:
            refused = r.json()["error"]["message"]
            assert r.headers.get("retry-after")
            break
        time.sleep(0.05)
    assert refused is not None
    ready = None
    try:
        ready = httpx.get(w.url + "/ready", timeout=5).status_code
    except httpx.TransportError:
        pass
    assert ready in (503, None)
    for t in threads:
        t.join(120)
    assert len(results) == 6
    assert all(f in ("stop", "length") and text for f, text in results)
    assert w.proc.wait(timeout=60) == 0
    w.stop()
