"""The agent API of a real ``babeldesk serve`` (qwen2.5-0.5b, sqlite sessions): a Spanish
customer asks for a person, an English-speaking agent claims, reads and replies; the
customer's event stream gets the reply in Spanish; every refusal has its status and
loses nothing; the webhooks fire once per transition."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import jsonschema
import pytest

from tests.conftest import REPO, WorkerProcess, start_worker
from tests.conftest import WebhookReceiver

pytestmark = pytest.mark.slow
ANA = "ana-key-0123456789abcdef"
BEN = "ben-key-0123456789abcdef"
OPS = "ops-key-0123456789abcdef"  # an operator key with every scope (reads /metrics)


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory, hooks: WebhookReceiver) -> Iterator[WorkerProcess]:
    tmp = tmp_path_factory.mktemp("agents")
    w = start_worker(tmp, "--model", "qwen2.5-0.5b", "--sessions", f"sqlite:///{tmp}/s.db",
                     "--max-message-chars", "2000", "--no-verifier", command="serve",
                     env={"BABELDESK_GATEWAY_AGENT_KEYS": f"ana:{ANA},ben:{BEN}",
                          "BABELDESK_GATEWAY_API_KEY": OPS,
                          "BABELDESK_SUPPORT_HANDOFF_WEBHOOK": hooks.url,
                          "BABELDESK_SUPPORT_PUBLIC_URL": "https://desk.example.com"})
    yield w
    assert w.stop() == 0


def check_schemas(events: list[dict]) -> None:
    """Each webhook payload against its documented JSON schema (docs/webhooks/)."""
    for e in events:
        schema = json.loads((REPO / "docs" / "webhooks" / f"{e['type']}.schema.json").read_text())
        jsonschema.validate(e, schema)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def sse(client: httpx.AsyncClient, url: str, out: list[dict], ready: asyncio.Event,
              headers: dict[str, str] | None = None) -> None:
    """Collect the events of an SSE stream into ``out`` (``ready`` once subscribed)."""
    async with client.stream("GET", url, headers=headers, timeout=None) as r:
        assert r.status_code == 200, await r.aread()
        kind = None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                if kind == "ready":
                    ready.set()
                else:
                    out.append(json.loads(line[6:]))


async def until(pred, timeout: float = 120.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


def test_handoff_claim_translate_reply_return(desk: WorkerProcess, hooks: WebhookReceiver) -> None:
    base = desk.url

    async def run() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=180) as c:
            first = (await c.post("/v1/support/messages", json={
                "message": "Quiero hablar con una persona, por favor"})).json()
            sid = first["session_id"]
            assert first["source"] == "handoff" and first["state"] == "waiting_for_agent"
            page: list[dict] = []
            agent_events: list[dict] = []
            page_ready, agent_ready = asyncio.Event(), asyncio.Event()
            streams = [
                asyncio.create_task(sse(c, f"/v1/support/sessions/{sid}/events", page,
                                        page_ready)),
                asyncio.create_task(sse(c, f"/v1/agent/conversations/{sid}/events",
                                        agent_events, agent_ready, auth(ANA)))]
            await asyncio.wait_for(asyncio.gather(page_ready.wait(), agent_ready.wait()), 30)

            # the assistant is silent while waiting; the message is kept for the agent
            waiting = (await c.post("/v1/support/messages", json={
                "session_id": sid, "message": "¿Dónde está mi pedido 12345?"})).json()
            assert (waiting["source"], waiting["reply"]) == ("agent", "")

            # the queue: language, reason, intent, wait time
            assert (await c.get("/v1/agent/queue")).status_code == 401
            q = (await c.get("/v1/agent/queue", headers=auth(ANA))).json()["conversations"]
            mine = next(x for x in q if x["session_id"] == sid)
            assert (mine["language"], mine["reason"], mine["intent"]) == (
                "es", "customer_request", "contact_human")
            assert mine["waiting_s"] >= 0 and mine["last_message"] == "¿Dónde está mi pedido 12345?"

            # replying before claiming: 409, nothing stored
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(ANA),
                             json={"message": "Hello"})
            assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error"
            claimed = await c.post(f"/v1/agent/conversations/{sid}/claim", headers=auth(ANA),
                                   json={"language": "en"})
            assert claimed.status_code == 200, claimed.text
            view = claimed.json()
            assert view["state"] == "with_agent" and view["agent"] == "ana"
            asked = [t for t in view["turns"] if t["text"] == "¿Dónde está mi pedido 12345?"][0]
            assert asked["translation_language"] == "en" and "12345" in asked["translation"]
            assert "order" in asked["translation"].lower()
            again = await c.post(f"/v1/agent/conversations/{sid}/claim", headers=auth(BEN),
                                 json={"language": "en"})
            assert again.status_code == 409
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(BEN),
                             json={"message": "Hi, Ben here"})
            assert r.status_code == 403
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(ANA),
                             json={"message": "x" * 2001})
            assert r.status_code == 413
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(ANA),
                             content=b"{not json")
            assert r.status_code == 400

            # the customer writes while the agent owns it: stored translated, delivered
            await c.post("/v1/support/messages", json={
                "session_id": sid, "message": "Gracias. ¿Llegará antes del viernes?"})
            def delivered(kind: str) -> list[dict]:
                return [e for e in agent_events if e.get("type") == kind
                        and (e.get("turn") or e)["text"] == "Gracias. ¿Llegará antes del viernes?"]

            await until(lambda: bool(delivered("message")))
            live = delivered("message")[0]["turn"]
            assert live["role"] == "user" and live["language"] == "es"
            # its translation follows, off the customer's request
            await until(lambda: bool(delivered("translation")))
            later = delivered("translation")[0]
            assert later["time"] == live["time"] and later["translation_language"] == "en"
            assert later["translation"] and later["translation"] != live["text"]

            # the agent's reply reaches the page live, in Spanish, marked translated
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(ANA),
                             json={"message": "Yes, your order will arrive on Thursday."})
            assert r.status_code == 200, r.text
            turn = r.json()["turn"]
            assert turn["translation_language"] == "es" and turn["translation"]
            await until(lambda: any(e.get("type") == "message" for e in page))
            shown = next(e for e in page if e.get("type") == "message")["turn"]
            assert shown["translated"] is True and shown["language"] == "es"
            assert shown["text"] == turn["translation"]
            assert shown["original"] == "Yes, your order will arrive on Thursday."
            assert "agent" not in shown  # the agent's name stays on the operator side

            # back to the assistant, which answers the next message
            r = await c.post(f"/v1/agent/conversations/{sid}/return", headers=auth(ANA))
            assert r.status_code == 200
            r = await c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(ANA),
                             json={"message": "one more thing"})
            assert r.status_code == 409
            back = (await c.post("/v1/support/messages", json={
                "session_id": sid, "message": "¿Cuánto cuesta el envío?"})).json()
            assert back["source"] in ("knowledge_base", "cache") and back["state"] == "bot"

            # the transcript holds every turn, the agent's with both versions
            t = (await c.get(f"/v1/agent/conversations/{sid}", headers=auth(ANA))).json()
            roles = [x["role"] for x in t["turns"]]
            assert roles == ["user", "assistant", "user", "system", "user", "agent", "system",
                             "user", "assistant"]
            agent_turn = t["turns"][5]
            assert agent_turn["text"] == "Yes, your order will arrive on Thursday."
            assert agent_turn["translation"] == turn["translation"]
            customer = (await c.get(f"/v1/support/sessions/{sid}")).json()
            assert customer["turns"][5]["text"] == turn["translation"]
            assert [e["state"] for e in page if e["type"] == "state"] == ["with_agent", "bot"]
            for s in streams:
                s.cancel()

    asyncio.run(run())
    asyncio.run(until(lambda: any(e["type"] == "agent.joined" for e in hooks.events), 30))
    kinds = [e["type"] for e in hooks.events]
    assert kinds.count("handoff.requested") == 1 and kinds.count("agent.joined") == 1
    check_schemas(hooks.events)
    joined = next(e for e in hooks.events if e["type"] == "agent.joined")
    assert joined["agent"] == "ana" and joined["transcript_url"].startswith(
        "https://desk.example.com/v1/agent/conversations/")


def test_closed_conversation_refuses_replies_and_untranslatable_is_flagged(
        desk: WorkerProcess, hooks: WebhookReceiver) -> None:
    c = httpx.Client(base_url=desk.url, timeout=180)
    sid = c.post("/v1/support/messages", json={
        "message": "Je veux parler à un humain"}).json()["session_id"]
    assert c.post(f"/v1/agent/conversations/{sid}/claim", headers=auth(BEN),
                  json={"language": "en"}).status_code == 200
    r = c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(BEN),
               json={"message": "👍👍👍"})
    assert r.status_code == 200
    turn = r.json()["turn"]
    assert turn["untranslated"] is True and turn["translation"] is None
    customer = c.get(f"/v1/support/sessions/{sid}").json()
    last = customer["turns"][-1]
    assert last["text"] == "👍👍👍" and last["translated"] is False
    assert c.post(f"/v1/agent/conversations/{sid}/close", headers=auth(ANA)).status_code == 403
    assert c.post(f"/v1/agent/conversations/{sid}/close", headers=auth(BEN)).status_code == 200
    n = len(c.get(f"/v1/agent/conversations/{sid}", headers=auth(BEN)).json()["turns"])
    r = c.post(f"/v1/agent/conversations/{sid}/reply", headers=auth(BEN),
               json={"message": "hello?"})
    assert r.status_code == 409 and "closed" in r.json()["error"]["message"]
    assert len(c.get(f"/v1/agent/conversations/{sid}", headers=auth(BEN)).json()["turns"]) == n
    assert c.get("/v1/agent/queue", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/v1/agent/conversations/nope/claim", headers=auth(BEN),
                  json={"language": "en"}).status_code == 404
    assert c.post(f"/v1/agent/conversations/{sid}/claim", headers=auth(BEN),
                  json={"language": 7}).status_code == 400
    asyncio.run(until(lambda: any(e["type"] == "conversation.closed" for e in hooks.events),
                      30))
    check_schemas(hooks.events)
    closed = [e for e in hooks.events if e["type"] == "conversation.closed"]
    assert [e["session_id"] for e in closed] == [sid] and closed[0]["agent"] == "ben"


def test_ratings_are_stored_counted_and_sent(desk: WorkerProcess, hooks: WebhookReceiver) -> None:
    c = httpx.Client(base_url=desk.url, timeout=180)
    first = c.post("/v1/support/messages", json={"message": "¿Cuánto cuesta el envío?"}).json()
    sid = first["session_id"]
    assert first["source"] in ("knowledge_base", "cache")
    assert c.post(f"/v1/support/sessions/{sid}/rating", json={"value": "up"}).status_code == 200
    assert c.post(f"/v1/support/sessions/{sid}/rating", json={"value": "meh"}).status_code == 400
    assert c.post(f"/v1/support/sessions/{sid}/rating", json=["up"]).status_code == 400
    assert c.post("/v1/support/sessions/unknown-1/rating",
                  json={"value": "up"}).status_code == 404
    turns = c.get(f"/v1/support/sessions/{sid}").json()["turns"]
    assert [(x["role"], x["source"], x["text"]) for x in turns][-1] == ("system", "rating", "up")
    metrics = c.get("/metrics", headers=auth(OPS)).text
    assert ('babeldesk_ratings_total{intent="shipping_cost",language="es",value="up"} 1.0'
            in metrics)
    assert ('babeldesk_conversations_total{intent="shipping_cost",language="es",'
            'outcome="resolved_confirmed"} 1.0') in metrics
    def rated_events() -> list[dict]:
        return [e for e in hooks.events if e["type"] == "conversation.rated"
                and e["session_id"] == sid]

    asyncio.run(until(lambda: bool(rated_events()), 30))  # delivered in the background
    rated = rated_events()
    assert len(rated) == 1 and rated[0]["rating"] == "up"
    assert rated[0]["rated_source"] == first["source"]
    check_schemas(rated)
