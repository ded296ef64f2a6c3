"""Two gateway processes on one real Redis: an agent connected to one sees, live, what a
customer sends through the other, and the customer's page on the other gets the agent's
reply (Redis pub/sub between processes)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import start_worker
from tests.gateway.test_agent_api import auth, sse, until
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.slow
KEY = "ana-key-0123456789abcdef"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent-gw")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis")
    redis.start()
    args = ["--model", "smollm2-135m", "--sessions", redis.url, "--cache", redis.url,
            "--no-verifier"]
    env = {"BABELDESK_GATEWAY_AGENT_KEYS": f"ana:{KEY}"}
    a = start_worker(tmp, *args, command="serve", env=env)
    b = start_worker(tmp, *args, command="serve", env=env)
    yield a, b
    a.stop()
    b.stop()
    redis.kill()


def test_agent_on_one_gateway_customer_on_the_other(pair) -> None:
    a, b = pair

    async def run() -> None:
        async with httpx.AsyncClient(timeout=120) as c:
            queue: list[dict] = []
            queue_ready = asyncio.Event()
            tasks = [asyncio.create_task(sse(c, f"{a.url}/v1/agent/events", queue, queue_ready,
                                             auth(KEY)))]
            await asyncio.wait_for(queue_ready.wait(), 30)
            first = (await c.post(f"{b.url}/v1/support/messages", json={
                "message": "I want to talk to a human agent please"})).json()
            sid = first["session_id"]
            assert first["state"] == "waiting_for_agent"
            await until(lambda: any(e.get("session_id") == sid for e in queue), 30)

            agent_events: list[dict] = []
            page: list[dict] = []
            agent_ready, page_ready = asyncio.Event(), asyncio.Event()
            tasks += [
                asyncio.create_task(sse(c, f"{a.url}/v1/agent/conversations/{sid}/events",
                                        agent_events, agent_ready, auth(KEY))),
                asyncio.create_task(sse(c, f"{b.url}/v1/support/sessions/{sid}/events", page,
                                        page_ready))]
            await asyncio.wait_for(asyncio.gather(agent_ready.wait(), page_ready.wait()), 30)
            r = await c.post(f"{a.url}/v1/agent/conversations/{sid}/claim", headers=auth(KEY),
                             json={"language": "en"})
            assert r.status_code == 200, r.text
            sent = await c.post(f"{b.url}/v1/support/messages", json={
                "session_id": sid, "message": "My parcel 4411 never arrived."})
            assert sent.json()["source"] == "agent"
            await until(lambda: any(e.get("type") == "message" and e["turn"]["text"]
                                    == "My parcel 4411 never arrived." for e in agent_events), 30)
            r = await c.post(f"{a.url}/v1/agent/conversations/{sid}/reply", headers=auth(KEY),
                             json={"message": "Sorry about that, I am sending a new one today."})
            assert r.status_code == 200, r.text
            await until(lambda: any(e.get("type") == "message" for e in page), 30)
            shown = next(e for e in page if e.get("type") == "message")["turn"]
            assert shown["text"] == "Sorry about that, I am sending a new one today."
            assert shown["role"] == "agent" and shown["translated"] is False
            assert [e["state"] for e in page if e["type"] == "state"] == ["with_agent"]
            for t in tasks:
                t.cancel()

    asyncio.run(run())


def test_translation_through_the_fleet(tmp_path) -> None:
    """``babeldesk gateway`` + a ``babeldesk worker`` (qwen2.5-0.5b), sqlite sessions: the
    agent's English reply reaches the Spanish customer translated by the worker."""
    worker = start_worker(tmp_path, "--model", "qwen2.5-0.5b")
    gateway = None
    try:
        gateway = start_worker(tmp_path, "--upstream", worker.url, "--upstream-model",
                               "qwen2.5-0.5b", "--sessions", f"sqlite:///{tmp_path}/s.db",
                               "--no-verifier", command="gateway",
                               env={"BABELDESK_GATEWAY_AGENT_KEYS": f"ana:{KEY}"})
        c = httpx.Client(base_url=gateway.url, timeout=180)
        first = c.post("/v1/support/messages", json={
            "message": "Quiero hablar con una persona, por favor"}).json()
        sid = first["session_id"]
        assert first["state"] == "waiting_for_agent" and first["language"] == "es"
        view = c.post(f"/v1/agent/conversations/{sid}/claim", headers=auth(KEY),
                      json={"language": "en"}).json()
        assert view["turns"][0]["translation_language"] == "en"  # read in English
        r = c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(KEY),
                   json={"message": "Hello, I can help you with your order."})
        turn = r.json()["turn"]
        assert r.status_code == 200 and turn["translation_language"] == "es"
        shown = c.get(f"/v1/support/sessions/{sid}").json()["turns"][-1]
        assert shown["translated"] is True and shown["text"] == turn["translation"]
    finally:
        if gateway is not None:
            gateway.stop()
        worker.stop()
