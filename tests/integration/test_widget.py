"""``widget.js`` on a shop's page from another origin, in headless Chromium (Debian's):
one script tag mounts the chat, which talks to a real ``babeldesk serve`` cross-origin;
the shop's origin is in ``gateway.cors_origins``, a page from any other origin is refused
by the browser (no CORS grant)."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import WorkerProcess, free_port, start_worker
from tests.gateway.test_chat_page import FLAGS

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class ShopSite:
    """A static page with the widget's one script tag, on its own origin."""

    def __init__(self, desk: str) -> None:
        page = (f"<!doctype html><html><head><title>Shop</title></head><body>"
                f"<h1>Our shop</h1><script src=\"{desk}/widget.js\" async></script>"
                f"</body></html>").encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, ShopSite, ShopSite]]:
    tmp: Path = tmp_path_factory.mktemp("widget")
    port = free_port()
    shop = ShopSite(f"http://127.0.0.1:{port}")
    stranger = ShopSite(f"http://127.0.0.1:{port}")
    serve = start_worker(tmp, "--model", "smollm2-135m", "--sessions", "memory://",
                         "--no-verifier", command="serve", port=port,
                         env={"BABELDESK_GATEWAY_CORS_ORIGINS": shop.origin,
                              "BABELDESK_SUPPORT_DOCS": "false"})
    try:
        yield serve, shop, stranger
    finally:
        serve.stop()
        shop.server.shutdown()
        stranger.server.shutdown()


def test_preflight_grants_only_the_allowed_origin(desk) -> None:
    serve, shop, stranger = desk
    ask = {"access-control-request-method": "POST",
           "access-control-request-headers": "content-type"}
    ok = httpx.options(serve.url + "/v1/support/messages", headers={"origin": shop.origin, **ask})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == shop.origin
    no = httpx.options(serve.url + "/v1/support/messages",
                       headers={"origin": stranger.origin, **ask})
    assert "access-control-allow-origin" not in no.headers
    js = httpx.get(serve.url + "/widget.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def _ask(browser, origin: str) -> tuple[str, str | None]:
    page = browser.new_page()
    page.goto(origin + "/")
    page.click("#bd-open")
    page.fill("#bd-input", "How long does delivery take?")
    page.click("#bd-send")
    reply = page.locator(".bd-bot, .bd-error").last
    reply.wait_for(timeout=120_000)
    return str(reply.get_attribute("class")), reply.get_attribute("data-source")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed")
def test_widget_on_a_shop_page_from_another_origin(desk) -> None:
    from playwright.sync_api import sync_playwright

    serve, shop, stranger = desk
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            kind, source = _ask(browser, shop.origin)
            assert "bd-bot" in kind and source == "knowledge_base"
            kind, source = _ask(browser, stranger.origin)  # not on the allow-list
            assert "bd-error" in kind and source is None
        finally:
            browser.close()
