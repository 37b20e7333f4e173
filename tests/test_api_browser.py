"""What a person sees of the HTTP API (issue 19), in Chromium (Playwright).

`/tokens new NAME DAYS` in the chat shows the new token once, in a message that is not
saved: after a reload of the conversation it is gone, while the notice that a token was
made stays, and `/tokens` lists it by its first characters only. The token then works
against `/v1/models`. `/api/docs` renders the API's reference from the app itself (no
CDN), with the images and jobs endpoints.

Screenshots go to the test's tmp_path and, when ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.app_process import ADMIN_PASSWORD
from tests.browser_support import (
    browser_fixture,
    collect_page_errors,
    expect_idle,
    goto,
    log_in,
    page_fixture,
    require_chromium,
    save_screenshot,
    send,
)

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)
TOKEN = re.compile(r"atl_[A-Za-z0-9_-]{43}")

browser = browser_fixture()
page = page_fixture(WAIT_MS)


def test_a_token_made_in_the_chat_is_shown_once_and_works(make_app, page: Page, tmp_path: Path):
    app = make_app()
    errors = collect_page_errors(page)
    log_in(page, "admin", ADMIN_PASSWORD, at=app.base_url)
    expect(page.locator("#chat-input")).to_be_visible()

    send(page, "/tokens new laptop 30")
    shown = page.get_by_text(TOKEN)
    expect(shown).to_be_visible()
    expect(page.get_by_text(re.compile(r"Made API token laptop"))).to_be_visible()
    token = TOKEN.search(shown.inner_text()).group(0)  # type: ignore[union-attr]
    save_screenshot(page, tmp_path, "api-1-token-made", height=None)

    send(page, "/tokens")
    listing = page.locator("table").last
    expect(listing).to_contain_text("laptop")
    expect(listing).to_contain_text(token[:12])
    expect(listing).not_to_contain_text(token[12:])
    save_screenshot(page, tmp_path, "api-2-token-list", height=None)

    models = httpx.get(
        f"{app.base_url}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert models.status_code == 200 and models.json()["object"] == "list", models.text

    expect_idle(page)
    page.reload(wait_until="domcontentloaded")  # the conversation resumes from the database
    expect(page.get_by_text(re.compile(r"Made API token laptop")).first).to_be_visible()
    expect(page.get_by_text(TOKEN)).to_have_count(0)
    save_screenshot(page, tmp_path, "api-3-after-reload", height=None)
    assert errors == [], errors


def test_the_api_reference_is_served_by_the_app(make_app, page: Page, tmp_path: Path):
    app = make_app()
    errors = collect_page_errors(page)
    outside: list[str] = []
    page.on(
        "request",
        lambda request: (
            None
            if request.url.startswith(app.base_url) or request.url.startswith("data:")
            else outside.append(request.url)
        ),
    )
    goto(page, f"{app.base_url}/api/docs")
    operations = page.locator("#operations")
    expect(operations).to_contain_text("/v1/images/generations")
    expect(operations).to_contain_text("/api/v1/jobs")
    save_screenshot(page, tmp_path, "api-4-docs", height=None)
    assert outside == [] and errors == [], (outside, errors)
