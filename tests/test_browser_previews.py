"""Watching an image render in a real browser: the preview changes, then the image.

The app runs as a subprocess against the fake OpenAI server, which streams two partial
images a couple of seconds apart (`stream_interval_s`), so the page can be seen in each
state: the first preview, the second (a different picture in the same place), the final
image with the preview gone, and the thread reopened with no leftover bar.

Screenshots go to the test's tmp_path and to /work/helper-notes/shots/previews/ (or
ATELIER_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser_support import (
    browser_fixture,
    collect_page_errors,
    log_in,
    page_fixture,
    require_chromium,
    save_screenshot,
)

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)
SHOTS = Path(os.environ.get("ATELIER_SCREENSHOT_DIR", "/work/helper-notes/shots/previews"))
PREVIEW = "img[src^='data:image/png']"  # a partial image as OpenAI sent it
FINAL = "[data-step-type] img[src*='/media/']"

browser = browser_fixture(scope="function")
page = page_fixture(WAIT_MS)


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    save_screenshot(page, tmp_path, name, height=None, settle_ms=0, copy_to=SHOTS)


def test_the_preview_changes_before_the_final_image(make_app, fake_openai, page, tmp_path):
    fake_openai.stream_interval_s = 2.5  # time for the page to be seen in each state
    app = make_app()
    errors = collect_page_errors(page)
    log_in(page, at=app.base_url)
    chat_input = page.locator("#chat-input")
    expect(chat_input).to_be_visible()

    chat_input.fill("draw a heron at dawn")
    page.locator("#chat-submit").click()
    preview = page.locator(PREVIEW)
    expect(preview).to_have_count(1)
    expect(preview).to_be_visible()
    expect(page.get_by_text("OpenAI is drawing").first).to_be_visible()
    first_src = preview.get_attribute("src")
    _shot(page, tmp_path, "1-first-preview")

    # The same image element shows the next partial image.
    page.wait_for_function(
        "([selector, before]) => {"
        "  const img = document.querySelector(selector);"
        "  return img && img.getAttribute('src') !== before && img.naturalWidth > 0; }",
        arg=[PREVIEW, first_src],
    )
    expect(preview).to_have_count(1)
    expect(page.locator(FINAL)).to_have_count(0)  # still drawing
    _shot(page, tmp_path, "2-second-preview")

    final = page.locator(FINAL)
    expect(final).to_have_count(1)
    expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
    expect(preview).to_have_count(0)  # the image replaced the preview
    expect(page.get_by_text("OpenAI is drawing")).to_have_count(0)
    final.scroll_into_view_if_needed()
    loaded = "img => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=final.element_handle())
    _shot(page, tmp_path, "3-final-image")

    # Reopened: the image, and no leftover bar or preview.
    page.reload(wait_until="domcontentloaded")
    expect(page.locator(FINAL)).to_have_count(1)
    expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
    expect(page.locator(PREVIEW)).to_have_count(0)
    expect(page.get_by_text("OpenAI is drawing")).to_have_count(0)
    _shot(page, tmp_path, "4-reopened")
    assert errors == []
