"""The acceptance run of issue 15 in a real browser: ``babeldesk serve`` (qwen2.5-0.5b,
Redis sessions), headless Chromium with the customer's chat page and the agent console
open at once. A Spanish customer asks for a person; the assistant stops answering; an
English-speaking agent claims, reads the customer's message in English, replies in
English; the customer's page shows the reply in Spanish, live; the agent returns the
conversation to the assistant, which answers the next message; the customer rates it;
the transcript holds every turn with originals and translations; each webhook fired once."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import WorkerProcess, start_worker
from tests.gateway.test_agent_api import check_schemas, until
from tests.gateway.test_chat_page import FLAGS
from tests.store.redis_server import RedisServer
from tests.conftest import WebhookReceiver

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "ana-key-0123456789abcdef"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, WebhookReceiver]]:
    tmp = tmp_path_factory.mktemp("console")
    (tmp / "redis").mkdir()
    redis = RedisServer(tmp / "redis")
    redis.start()
    hooks = WebhookReceiver()
    w = start_worker(tmp, "--model", "qwen2.5-0.5b", "--sessions", redis.url, "--cache",
                     redis.url, "--no-verifier", command="serve",
                     env={"BABELDESK_GATEWAY_AGENT_KEYS": f"ana:{KEY}",
                          "BABELDESK_SUPPORT_HANDOFF_WEBHOOK": hooks.url})
    yield w, hooks
    w.stop()
    hooks.close()
    redis.kill()


@pytest.mark.skipif(CHROMIUM is None,
                    reason="Debian chromium not installed (scripts/install.sh --test)")
def test_customer_and_agent_pages_at_once(setup, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    serve, hooks = setup
    long = 180_000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            customer = browser.new_context(locale="es-ES").new_page()
            agent = browser.new_context().new_page()
            customer.goto(serve.url + "/")
            customer.fill("#input", "Quiero hablar con una persona, por favor")
            customer.click("#send")
            badge = customer.locator(".msg.bot .badge").last
            badge.wait_for(timeout=long)
            assert badge.inner_text() == "human handoff"
            sid = customer.evaluate("sessionStorage.getItem('babeldesk-session')")
            # the assistant is silent now: the message goes to the agents
            customer.fill("#input", "¿Dónde está mi pedido 12345?")
            customer.click("#send")
            expect(customer.locator(".note").last).to_contain_text("agent", timeout=long)
            assert customer.locator(".msg.bot").count() == 1

            agent.goto(serve.url + "/agent")
            agent.fill("#key", KEY)
            agent.fill("#language", "en")
            agent.click("#connect")
            item = agent.locator(f".item[data-session='{sid}']")
            item.wait_for(timeout=long)
            assert "es" in item.locator(".meta").inner_text()
            item.locator(".claim").click()
            expect(agent.locator("#status")).to_have_attribute("data-state", "with_agent",
                                                              timeout=long)
            asked = agent.locator(".turn.user").filter(has_text="12345").last
            assert "order" in asked.locator(".text").inner_text().lower()
            assert "¿Dónde está mi pedido 12345?" in asked.locator(".orig").inner_text()
            expect(customer.locator(".note").last).to_contain_text("agent", timeout=long)

            # the customer writes while the agent owns it: shown at once, translated after
            customer.fill("#input", "Gracias. ¿Llegará pronto?")
            customer.click("#send")
            expect(agent.locator(".turn.user .orig").filter(
                has_text="Gracias. ¿Llegará pronto?")).to_have_count(1, timeout=long)

            agent.fill("#reply", "Your order left our warehouse today.")
            agent.click("#send")
            live = customer.locator(".msg.bot.agent").last
            live.wait_for(timeout=long)
            assert live.get_attribute("data-language") == "es"
            assert "translated" in live.locator(".reply-lang").inner_text()
            shown = live.locator(".text").inner_text()
            assert shown and shown != "Your order left our warehouse today."
            expect(agent.locator(".turn.agent").last).to_contain_text("left our warehouse",
                                                                      timeout=long)

            agent.click("#return")
            expect(customer.locator(".note").last).to_contain_text("assistant", timeout=long)
            customer.fill("#input", "¿Cuánto cuesta el envío?")
            customer.click("#send")
            answer = customer.locator(".msg.bot").last
            answer.locator(".badge").wait_for(timeout=long)
            assert answer.get_attribute("data-source") in ("knowledge_base", "cache")
            answer.locator(".rate-up").click()
            expect(answer.locator(".rate-up")).to_have_class("rate rate-up chosen", timeout=30_000)
            customer.screenshot(path=str(tmp_path / "customer.png"))
            agent.screenshot(path=str(tmp_path / "agent.png"))
        finally:
            browser.close()

    t = httpx.get(f"{serve.url}/v1/agent/conversations/{sid}?language=en",
                  headers={"Authorization": f"Bearer {KEY}"}, timeout=60).json()
    roles = [x["role"] for x in t["turns"]]
    assert roles == ["user", "assistant", "user", "system", "user", "agent", "system", "user",
                     "assistant", "system"]
    reply = t["turns"][5]
    assert (reply["text"], reply["language"]) == ("Your order left our warehouse today.", "en")
    assert reply["translation"] == shown and reply["translation_language"] == "es"
    for i in (0, 2, 4):  # the customer's messages, shown to an English agent translated
        assert t["turns"][i]["translation_language"] == "en" and t["turns"][i]["translation"]
    assert t["turns"][-1]["source"] == "rating" and t["turns"][-1]["text"] == "up"
    asyncio.run(until(lambda: any(e["type"] == "conversation.rated" for e in hooks.events),
                      30))
    kinds = sorted(e["type"] for e in hooks.events if e["session_id"] == sid)
    assert kinds == ["agent.joined", "conversation.rated", "handoff.requested"]
    check_schemas(hooks.events)
