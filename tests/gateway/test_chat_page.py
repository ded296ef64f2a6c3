"""Headless Chromium (Debian's) drives the chat page: a Spanish refund question gets a
Spanish knowledge-base answer with its badge; a help-center answer shows its sources as
links."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/install.sh --test)")
def test_spanish_refund_question_in_the_browser(serve, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(serve.url + "/")
            page.fill("#input", "Hola, devolví unos zapatos la semana pasada, ¿cuándo recibiré el reembolso?")
            page.click("#send")
            reply = page.locator(".msg.bot").last
            badge = reply.locator(".badge")
            badge.wait_for(timeout=120_000)
            assert badge.inner_text() == "knowledge base"
            assert reply.get_attribute("data-source") == "knowledge_base"
            assert reply.get_attribute("data-language") == "es"
            assert "reembolso" in reply.locator(".text").inner_text().lower()
            assert page.inner_text("#lang") == "es"
            page.screenshot(path=str(tmp_path / "chat.png"))
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (scripts/install.sh --test)")
def test_a_help_center_answer_links_its_sources(serve) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(serve.url + "/")
            page.fill("#input", "How long is a gift card valid?")
            page.click("#send")
            reply = page.locator(".msg.bot").last
            reply.locator(".badge").wait_for(timeout=120_000)
            assert reply.get_attribute("data-source") in ("document", "cache")
            link = reply.locator(".sources a").first
            assert link.get_attribute("href") == "https://help.pinecone-market.example/gift-cards"
            assert link.inner_text().startswith("Gift cards")
            assert link.get_attribute("rel") == "noopener"
        finally:
            browser.close()
