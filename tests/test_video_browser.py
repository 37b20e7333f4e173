"""The clip in a real browser: Chromium really decodes it, live and after a reload.

"Animate the fox" through the real front end; the page must show a <video> whose poster
is the stored poster frame and whose metadata the browser decoded (videoWidth > 0), both
live and when the thread is opened again from the history sidebar (signed media link).
Everything off localhost is aborted, as in test_browser.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser_support import (
    browser_fixture,
    collect_page_errors,
    goto,
    log_in,
    page_fixture,
    require_chromium,
    send,
)
from tests.replicate_fixtures import replicate_app_env

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
THREAD_URL = re.compile(r"/thread/[0-9a-f-]{36}$")

browser = browser_fixture()
page = page_fixture(WAIT_MS, height=1400)


def _expect_playable_clip(page: Page, src_pattern: str) -> None:
    video = page.locator("video")
    expect(video).to_have_count(1)
    expect(video).to_have_attribute("src", re.compile(src_pattern))
    expect(video).to_have_attribute("poster", re.compile(r"^/media/[0-9a-f]{64}$"))
    video.scroll_into_view_if_needed()
    page.wait_for_function(
        "v => v.readyState >= 1 && v.videoWidth > 0 && v.duration > 5.9",
        arg=video.element_handle(),
        timeout=WAIT_MS,
    )
    assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 64]
    # The poster really is an image the browser can fetch with the login cookie.
    poster = video.get_attribute("poster")
    status = page.evaluate("url => fetch(url).then(r => r.status)", poster)
    assert status == 200


def test_animate_the_fox_plays_live_and_after_a_reload(
    make_app, fake_replicate, page: Page, tmp_path: Path
) -> None:
    app = make_app(**replicate_app_env(fake_replicate, ATELIER_LOCAL_ENABLED="0"))
    errors = collect_page_errors(page)
    log_in(page, at=app.base_url)
    expect(page.get_by_text("Welcome to Atelier.")).to_be_visible()

    # The image comes from (fake) OpenAI, which makes no video: the clip from Replicate.
    send(page, "draw a red fox in the snow")
    expect(page.get_by_text("Done. Generated 1 image(s)")).to_be_visible()
    send(page, "animate the fox")
    expect(page.get_by_text(re.compile(r"Done\. Made a 6 s clip"))).to_be_visible()
    expect(page).to_have_url(THREAD_URL)
    _expect_playable_clip(page, r"/project/file/")
    page.screenshot(path=str(tmp_path / "live.png"))

    goto(page, app.base_url)
    expect(page.locator("#chat-input")).to_be_visible()
    page.locator("#thread-history").get_by_text("draw a red fox in the snow").click()
    expect(page).to_have_url(THREAD_URL)
    _expect_playable_clip(page, r"/media/[0-9a-f]{64}\?exp=")
    page.screenshot(path=str(tmp_path / "resumed.png"))
    assert errors == []
