"""The browser demo page (web/) in a real headless Chromium, inside a private network namespace.

Chromium's fake media devices play a speech fixture as the microphone. Every test saves a
screenshot under artifacts/browser/ (look at it: the assertions check numbers, the picture
shows whether the page is readable).
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import browser
import pytest

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(browser.unavailable_reason() is not None, reason=browser.unavailable_reason() or ""),
]


# ---------------------------------------------------------------------------- the page alone


class _StaticWithHealth(SimpleHTTPRequestHandler):
    """web/ as files plus a fixed /health, for checking the page renders before any server exists."""

    health: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.split("?")[0] == "/health":
            body = json.dumps(self.health).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def static_site():
    handler = type("H", (_StaticWithHealth,), {"health": {"model": "tiny", "device": "cpu", "is_tiny": True}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(WEB_DIR)))
    thread = threading.Thread(target=server.serve_forever, name="static-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_static_page_renders_offline_with_tiny_banner(static_site, netns_addrs):
    for name, viewport in (("static_page", (1280, 900)), ("static_page_phone", (390, 844))):
        with browser.chromium(viewport=viewport) as page:
            errors = browser.console_errors(page)
            foreign = browser.watch_requests(page, static_site)
            page.goto(static_site + "/index.html")
            page.wait_for_selector("#tiny-banner:not([hidden])", timeout=10_000)
            assert "speech is noise" in page.inner_text("#tiny-banner")
            assert page.inner_text("#server-info") == "tiny · cpu"
            assert page.get_attribute("#conn-state", "data-state") == "disconnected"
            # The HUD draws its axes and both reference lines before any turn.
            assert page.locator("#hud-chart line.ref").count() == 2
            assert page.inner_text("#connect") == "Connect"
            # Push-to-talk mode shows its button; hands-free hides it.
            assert page.locator("#ptt").is_hidden()
            page.check('input[name="mode"][value="ptt"]')
            assert page.locator("#ptt").is_visible()
            # Nothing outside the page's own origin is fetched, and nothing throws.
            assert foreign == []
            assert errors == []
            if name.endswith("phone"):
                # Readable on a phone: one column, no horizontal scrolling.
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport[0], f"page is {width}px wide on a {viewport[0]}px screen"
            browser.screenshot(page, name)
