"""The real front end in a real browser: Chromium driven by Playwright.

The app runs as a subprocess (`atelier run`) against the fake OpenAI server. The test
logs in through the form, asks for an image, and checks the tool step and the image
(really decoded: ``naturalWidth > 0``) live, after a new page load from the history
sidebar, and after the server process restarts on the same data directory.

Everything off localhost (Google Fonts, KaTeX CSS from a CDN) is aborted: with no
internet the page's load event would otherwise hang.

Screenshots go to the test's tmp_path and, when ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser_support import (
    browser_fixture,
    expect_decoded,
    goto,
    log_in,
    on_failure_show,
    page_errors_fixture,
    page_fixture,
    require_chromium,
    save_screenshot,
    signed_in,
)

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)  # `expect` has its own 5 s default
PROMPT = "draw a red fox in the snow"
# Images in the conversation, not the authors' avatars.
# Stored images, not avatars nor the live previews (data: URIs) that they replace.
CONTENT_IMAGES = "[data-step-type] img:not([alt^='Avatar for']):not([src^='data:'])"
TOOL_STEP = "[data-step-type='tool']"
THREAD_URL = re.compile(r"/thread/[0-9a-f-]{36}$")
MEDIA_URL = r"/media/[0-9a-f]+\?"

browser = browser_fixture()
page = page_fixture(WAIT_MS)
page_errors = page_errors_fixture()


# ------------------------------------------------------------------------------- helpers


def _expect_tool_step(page: Page) -> None:
    step = page.locator(TOOL_STEP).filter(has_text="generate_image")
    expect(step).to_have_count(1)
    expect(step).to_be_visible()
    # The step opens to show the call's arguments (the prompt) and its result.
    toggle = step.locator("button[aria-expanded]", has_text="generate_image")
    if toggle.get_attribute("aria-expanded") != "true":
        toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    details = step.get_by_role("region")
    expect(details).to_be_visible()
    expect(details).to_contain_text(f'"prompt": "{PROMPT}"')
    expect(details).to_contain_text("Generated 1 image(s)")


def _expect_image_loaded(page: Page, src_pattern: str) -> str:
    """One content image, decoded by the browser; returns its URL."""
    image = page.locator(CONTENT_IMAGES)
    expect(image).to_have_count(1)
    expect(image).to_have_attribute("src", re.compile(src_pattern))
    image.scroll_into_view_if_needed()  # the front end marks it loading="lazy"
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0",
        arg=image.element_handle(),
        timeout=WAIT_MS,
    )
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [1024, 1024]
    return image.get_attribute("src") or ""


def _expect_conversation(page: Page, src_pattern: str) -> str:
    expect(page.locator("[data-step-type='user_message']")).to_contain_text(PROMPT)
    expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
    src = _expect_image_loaded(page, src_pattern)
    _expect_tool_step(page)
    return src


def _open_from_sidebar(page: Page) -> None:
    entry = page.locator("#thread-history").get_by_text(PROMPT, exact=True)
    expect(
        entry,
        "the thread should be listed under its first message (an 'Untitled Conversation' "
        "means the thread name was not stored: look for persist_failed in the app log)",
    ).to_be_visible()
    entry.click()
    expect(page).to_have_url(THREAD_URL)


# --------------------------------------------------------------------------------- tests


def test_generate_image_survives_reload_and_restart(
    make_app, page: Page, page_errors: list[str], tmp_path: Path
):
    app = make_app()
    with signed_in(app, page, page_errors, tmp_path):
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()

        chat_input.fill(PROMPT)
        page.locator("#chat-submit").click()
        expect(page.locator(TOOL_STEP).filter(has_text="generate_image")).to_be_visible()
        expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
        expect(page).to_have_url(THREAD_URL)
        thread_url = page.url
        # Shown from the media store, where the image was stored (no second copy).
        live_src = _expect_conversation(page, r"/media/[0-9a-f]{64}")
        save_screenshot(page, tmp_path, "1-live")

        # A new page load: start on a fresh chat, then open the thread from the sidebar.
        goto(page, app.base_url)
        expect(page.locator("#chat-input")).to_be_visible()
        _open_from_sidebar(page)
        assert page.url == thread_url
        resumed_src = _expect_conversation(page, MEDIA_URL)
        assert urlsplit(resumed_src).path == urlsplit(live_src).path  # the same file
        save_screenshot(page, tmp_path, "2-reloaded")

        app.restart()
        # Same data dir, so same auth secret: the login cookie is still good.
        page.reload(wait_until="domcontentloaded")
        expect(page.locator("#chat-input")).to_be_visible()
        expect(page.locator("#email")).to_have_count(0)
        assert page.url == thread_url
        _expect_conversation(page, MEDIA_URL)

        goto(page, app.base_url)
        expect(page.locator("#chat-input")).to_be_visible()
        _open_from_sidebar(page)
        assert page.url == thread_url
        after_restart_src = _expect_conversation(page, MEDIA_URL)
        assert urlsplit(after_restart_src).path == urlsplit(resumed_src).path
        save_screenshot(page, tmp_path, "3-after-restart")


def test_wrong_password_is_refused(make_app, page: Page, tmp_path: Path):
    app = make_app()
    with on_failure_show(app, page, tmp_path):
        log_in(page, password="not-the-password", at=app.base_url)
        refused = page.get_by_role("alert").filter(has_text="Wrong username or password.")
        expect(refused).to_be_visible()
        expect(page.locator("#email")).to_be_visible()
        save_screenshot(page, tmp_path, "login-refused")
        expect(page.locator("#chat-input")).to_have_count(0)
        assert page.context.cookies() == []  # no session cookie was handed out


def test_refine_in_the_browser_settings_panel_and_before_after(
    make_app, page: Page, page_errors: list[str], tmp_path: Path
):
    """Set a seed in the settings panel, draw, then 'make it bluer': before and after."""
    app = make_app()
    with signed_in(app, page, page_errors, tmp_path):
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()

        page.locator("#chat-settings-open-modal").click()
        seed = page.locator("input#seed")
        expect(seed).to_be_visible()
        seed.fill("42")
        page.get_by_role("button", name=re.compile("confirm", re.I)).click()
        expect(
            page.get_by_text(re.compile(r"Settings for this conversation: .*seed 42"))
        ).to_be_visible()

        chat_input.fill(PROMPT)
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
        # OpenAI has no seed: the chat says the panel's seed was recorded but not used.
        expect(
            page.get_by_text(re.compile("seed 42 was recorded but not used")).first
        ).to_be_visible()

        chat_input.fill("make it bluer")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Done. Edited into 1 image(s)")).to_be_visible()
        expect(page.locator(TOOL_STEP).filter(has_text="edit_image")).to_be_visible()
        # The before/after message holds the source and the result, both decoded.
        images = page.locator(CONTENT_IMAGES)
        expect(images).to_have_count(3)
        expect_decoded(page, images, (1, 2))
        save_screenshot(page, tmp_path, "4-before-after")


def test_curation_grid_with_scores(make_app, page: Page, page_errors: list[str], tmp_path: Path):
    """'best of 4' shows four decoded candidates side by side with a score table."""
    app = make_app()
    with signed_in(app, page, page_errors, tmp_path):
        chat_input = page.locator("#chat-input")
        expect(chat_input).to_be_visible()
        expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()
        chat_input.fill("best of 4 crayon apples DISC_TEST")
        page.locator("#chat-submit").click()
        expect(page.get_by_text(re.compile(r"Curated 4 candidate\(s\), kept"))).to_be_visible()
        table = page.locator("table").filter(has_text="verdict")
        expect(table).to_be_visible()
        expect(table.locator("tbody tr")).to_have_count(4)
        expect(page.get_by_text("Why the others lost")).to_be_visible()
        images = page.locator(CONTENT_IMAGES)
        expect(images).to_have_count(4)
        expect_decoded(page, images, range(4))
        save_screenshot(page, tmp_path, "5-curation")


def test_confirm_or_cancel_before_spending_and_the_cost_chart(
    make_app, page: Page, page_errors: list[str], tmp_path: Path
):
    """Above the threshold the chat asks with two buttons; Cancel spends nothing."""
    app = make_app(ATELIER_CONFIRM_ABOVE_USD="0.01")
    with signed_in(app, page, page_errors, tmp_path):
        chat_input = page.locator("#chat-input")
        expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()
        chat_input.fill("/image a lighthouse")
        page.locator("#chat-submit").click()
        expect(page.get_by_text(re.compile(r"Estimated cost of 1 image"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"above your confirmation threshold"))).to_be_visible()
        save_screenshot(page, tmp_path, "6-confirm")
        page.get_by_role("button", name="Cancel").click()
        expect(page.get_by_text(re.compile(r"nothing was spent"))).to_be_visible()
        expect(page.locator(CONTENT_IMAGES)).to_have_count(0)

        chat_input.fill("/image a lighthouse")
        page.locator("#chat-submit").click()
        page.get_by_role("button", name="Confirm").click()
        images = page.locator(CONTENT_IMAGES)
        expect(images).to_have_count(1)
        expect_decoded(page, images, [0])

        chat_input.fill("/cost")
        page.locator("#chat-submit").click()
        expect(page.get_by_text("Cost report (last 30 days)")).to_be_visible()
        expect(page.locator(".js-plotly-plot")).to_have_count(1)
        expect(page.get_by_text("atelier-costs-30d.csv")).to_be_visible()
        save_screenshot(page, tmp_path, "7-cost")
