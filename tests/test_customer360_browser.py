"""The Customer 360 page in a real browser: Debian chromium driven by playwright, over a live server.

Signs in through the login form, opens the customer from the search box, and checks what an agent
sees (name, consent badges, the open issue, the bot hand-off context, the timeline and its channel
filter); keeps a screenshot under tmp_path.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed (make browser-deps)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_site(tmp_path):
    import uvicorn

    from api import keys
    from api.app import create_app
    from identity.store import get_engine
    from tests.test_api_endpoints import seed

    engine = get_engine(f"sqlite:///{tmp_path / 'store.db'}")
    seed(engine)
    key = keys.create_key("agent", ["profile:read", "pii:read"], engine=engine)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", key
    server.should_exit = True
    thread.join(timeout=10)


def test_agent_signs_in_finds_the_customer_and_sees_the_whole_story(live_site, tmp_path):
    from playwright.sync_api import sync_playwright

    base, key = live_site
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1400})
            page.goto(f"{base}/360/g-amara")
            assert "/360/login" in page.url  # not signed in yet
            page.fill("input[name=key]", key)
            page.click("form button[type=submit]")
            page.wait_for_url(f"{base}/360/g-amara")

            assert page.inner_text("#customer-name") == "Amara Okafor"
            assert page.inner_text("#tier") == "gold"
            consent = page.inner_text("#consent")
            assert "sms · marketing: opted out" in consent and "email · marketing: opted in" in consent
            assert "open issue" in page.inner_text("#open-case")
            handoff = page.inner_text("#last-handoff")
            assert "Ava" in handoff and "refund" in handoff and "order_id: 5521" in handoff
            assert page.locator("ol.timeline li.event").count() == 6
            assert page.locator(".event .handoff").count() == 1
            # the consent badges are styled (the stylesheet loaded under the page's CSP)
            color = page.eval_on_selector(".consent-opted_out", "e => getComputedStyle(e).color")
            assert color == "rgb(185, 28, 28)"
            page.screenshot(path=str(tmp_path / "customer360.png"), full_page=True)

            page.click("nav.chips >> text=sms")
            page.wait_for_url("**channels=sms")
            assert page.locator("ol.timeline li.event").count() == 2

            # the search box in the header finds the customer by a differently written address
            page.fill("header input[name=email]", "AMARA.OKAFOR@example.com")
            page.click("header button")
            page.wait_for_url(f"{base}/360/g-amara")
            assert page.inner_text("#customer-name") == "Amara Okafor"
        finally:
            browser.close()
    shot = tmp_path / "customer360.png"
    assert shot.exists() and shot.stat().st_size > 10_000
