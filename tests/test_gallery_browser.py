"""The gallery in a real browser: find an image, see where it came from, carry on from it.

The app runs as a subprocess against the fake OpenAI (images) and the fake Replicate
(the clip). The images are made the way a person makes them, in the chat: a fox, an
edit of it ("make it bluer"), a clip of the edit, and a lighthouse. Then, as a person:
the edit's "Open in gallery" link opens its detail view straight away; its lineage shows
the fox above it and the clip below; a click on the fox opens the fox; "Open in
conversation" goes back to the chat; the header's "Gallery" link opens the grid; a search
for "lighthouse" finds the lighthouse alone, and one for words nobody typed finds the
empty state. The page follows the chat's theme, and its switch changes both.

Screenshots go to the test's tmp_path (and ATELIER_SCREENSHOT_DIR when set). Everything
off localhost is aborted, as in test_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.browser_support import (
    browser_fixture,
    goto,
    page_errors_fixture,
    page_fixture,
    require_chromium,
    save_screenshot,
    send,
    signed_in,
)
from tests.replicate_fixtures import replicate_app_env

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
THREAD_URL = re.compile(rf"/thread/{UUID}$")
DETAIL_URL = re.compile(rf"/gallery\?image=({UUID})$")
FOX = "draw a red fox in the snow"

browser = browser_fixture()
page = page_fixture(WAIT_MS)
page_errors = page_errors_fixture()


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    save_screenshot(page, tmp_path, name, height=None, settle_ms=400)


def _decoded(page: Page, selector: str) -> None:
    """Every image matching `selector` is really decoded by the browser."""
    images = page.locator(selector)
    for index in range(images.count()):
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=images.nth(index).element_handle()
        )


def _make_images(page: Page) -> None:
    send(page, FOX)
    expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
    send(page, "make it bluer")
    expect(page.get_by_text("Done. Edited into 1 image(s)")).to_be_visible()
    send(page, "animate the fox")
    expect(page.get_by_text(re.compile(r"Done\. Made a \d+ s clip"))).to_be_visible()
    shown = page.locator(".atl-tile").count()
    send(page, "/image a lighthouse at dusk")
    expect(page.locator(".atl-tile")).to_have_count(shown + 1)
    expect(page).to_have_url(THREAD_URL)


def test_find_an_image_walk_its_lineage_and_go_back_to_its_conversation(
    make_app, fake_replicate, page: Page, page_errors: list[str], tmp_path: Path
) -> None:
    app = make_app(**replicate_app_env(fake_replicate, ATELIER_LOCAL_ENABLED="0"))
    with signed_in(app, page, page_errors, tmp_path):
        expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()
        header_link = page.locator("#atelier-gallery-link")
        expect(header_link).to_have_attribute("href", "/gallery")
        _make_images(page)
        thread_url = page.url

        # Every image of the chat links to its gallery view; the edit's ("after") opens it.
        links = page.locator(".atl-tile .atl-gallery")
        expect(links).to_have_count(page.locator(".atl-tile").count())
        for link in links.all():
            expect(link).to_have_attribute("href", re.compile(rf"^/gallery\?image={UUID}$"))
        last = page.locator(".atl-tile").last
        last.scroll_into_view_if_needed()
        last.locator("xpath=..").hover()  # its buttons show on hover, the gallery's among them
        expect(last.locator(".atl-gallery")).to_have_css("opacity", "1")
        _shot(page, tmp_path, "gallery-0-chat-links")
        edit_id = _edited_image_id(page)
        page.locator(f".atl-tile[data-image='{edit_id}'] .atl-gallery").first.click()

        # The detail view, opened from the link: the record and the lineage.
        expect(page).to_have_url(DETAIL_URL)
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        record = page.locator("#detail-record")
        expect(record).to_contain_text("bluer")
        expect(record).to_contain_text(edit_id)
        expect(page.locator("#act-open")).to_have_attribute("href", urlsplit(thread_url).path)
        nodes = page.locator("#lineage .g-node")
        expect(nodes.first).to_be_visible()
        focus = page.locator("#lineage .g-node-focus")
        expect(focus).to_have_count(1)
        expect(focus).to_have_attribute("data-id", edit_id)
        expect(page.locator("#lineage .g-node-video")).to_have_count(1)  # the clip of it
        _decoded(page, "#detail-media img")
        _decoded(page, "#lineage img")
        _shot(page, tmp_path, "gallery-2-detail")

        # Walk up: the parent (the fox) opens in the same view.
        parent = page.locator("#lineage button.g-node-image:not(.g-node-focus)")
        expect(parent).to_have_count(1)
        fox_id = parent.get_attribute("data-id")
        parent.click()
        expect(page).to_have_url(re.compile(rf"/gallery\?image={fox_id}$"))
        expect(page.locator("#lineage .g-node-focus")).to_have_attribute("data-id", fox_id or "")
        expect(record).to_contain_text("fox")
        expect(record).not_to_contain_text("bluer")
        _decoded(page, "#lineage img")
        _shot(page, tmp_path, "gallery-3-lineage")

        # ... and back to the conversation it was made in.
        page.locator("#act-open").click()
        expect(page).to_have_url(thread_url)
        expect(page.locator("[data-step-type='user_message']").first).to_contain_text(FOX)

        # The header's link opens the grid: the four, newest first, the clip badged.
        page.locator("#atelier-gallery-link").click()
        expect(page).to_have_url(re.compile(r"/gallery$"))
        tiles = page.locator("#grid .g-tile")
        expect(tiles).to_have_count(4)
        expect(tiles.first).to_contain_text("lighthouse")
        expect(page.locator("#grid .g-badge-video")).to_have_count(1)
        _decoded(page, "#grid img")
        _shot(page, tmp_path, "gallery-1-grid")

        # Search by words: the lighthouse alone; open it, Esc closes it.
        page.locator("#search").fill("lighthouse")
        expect(tiles).to_have_count(1)
        expect(page.locator("#status")).to_contain_text("lighthouse")
        _decoded(page, "#grid img")
        tiles.first.hover()  # its prompt shows on hover
        _shot(page, tmp_path, "gallery-4-search")
        tiles.first.locator(".g-tile-link").click()
        expect(detail).to_be_visible()
        expect(record).to_contain_text("lighthouse")
        page.keyboard.press("Escape")
        expect(detail).to_be_hidden()
        expect(page).to_have_url(re.compile(r"/gallery\?q=lighthouse$"))

        # Words no prompt holds: the empty state says so and offers to clear.
        page.locator("#search").fill("zebra unicorn")
        expect(page.locator("#empty")).to_be_visible()
        expect(page.locator("#empty")).to_contain_text("Nothing matches")
        _shot(page, tmp_path, "gallery-5-empty")
        page.locator("#empty-clear").click()
        expect(tiles).to_have_count(4)

        # The chat's theme (dark unless chosen) is the gallery's; its switch sets both.
        expect(page.locator("html")).to_have_class(re.compile(r"\bdark\b"))
        page.locator("#theme-toggle").click()
        expect(page.locator("html")).to_have_class(re.compile(r"\blight\b"))
        assert page.evaluate("localStorage.getItem('vite-ui-theme')") == "light"
        # The same detail in the light theme, by its link.
        goto(page, f"{app.base_url}/gallery?image={edit_id}")
        expect(page.locator("html")).to_have_class(re.compile(r"\blight\b"))
        expect(page.locator("#lineage .g-node-focus")).to_have_attribute("data-id", edit_id)
        _decoded(page, "#lineage img")
        _shot(page, tmp_path, "gallery-6-detail-light")
        page.keyboard.press("Escape")
        expect(page.locator("#detail")).to_be_hidden()
        _decoded(page, "#grid img")
        _shot(page, tmp_path, "gallery-7-grid-light")


def _edited_image_id(page: Page) -> str:
    """The edit's id: the before/after message shows "before-<source>.png", then it."""
    names = page.locator(".atl-tile").evaluate_all(
        "tiles => tiles.map(t => t.parentElement.querySelector('img').alt)"
    )
    before = next(i for i, name in enumerate(names) if name.startswith("before-"))
    found = re.match(rf"^({UUID})\.", names[before + 1])
    assert found, names
    return found[1]
