"""Before the model is loaded the worker's OpenAI routes are not mounted: a call to them
gets a 503 with Retry-After (a balancer retries it on another worker), never a 404 (a
fleet hands a 4xx back to its client as is). The real app, in-process."""

from __future__ import annotations

import httpx

from babeldesk.config import load_config
from babeldesk.telemetry.metrics import Metrics
from babeldesk.edge.lifecycle import Phase
from babeldesk.worker.app import WorkerState, create_app


async def test_openai_routes_answer_503_until_the_model_is_mounted() -> None:
    state = WorkerState(load_config(env={}), Metrics("worker"))
    app = create_app(state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            r = await client.request(method, path, json=body if method == "POST" else None)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"] == {"type": "service_unavailable",
                                         "message": "worker is loading"}
        # any other unknown path is still the client's 404
        r = await client.get("/v1/completions")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
        assert (await client.get("/ready")).status_code == 503

        state.phase = Phase.FAILED  # a load that failed: still not the client's fault
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 503 and r.json()["error"]["message"] == "worker is failed"
    text = state.metrics.render().decode()
    assert 'route="unmatched",status="503"' in text  # counted as the worker's, not a 404
