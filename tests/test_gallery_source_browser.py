"""The gallery's Source filter in a real browser: chat images, a batch's, a schedule's.

Two images are made in the chat as a person makes them; one of them is then filed under
a schedule's run (a batch row naming the schedule, the image's batch_id), as the
scheduler's batch records it. The page opened with `?origin=schedule` shows only that
one, with the Source select saying so; choosing "Chat" shows the other; a link to one
batch (`?batch=ID`, as a batch's summary gives) shows its images with the batch named.

Screenshots go to the test's tmp_path (and ATELIER_SCREENSHOT_DIR when set).
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

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

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)

browser = browser_fixture()
page = page_fixture(WAIT_MS)
page_errors = page_errors_fixture()


def _file_under_a_schedule(data_dir: Path, prompt: str) -> tuple[str, str]:
    """(batch id, image id): the image of `prompt` made part of a schedule's run."""
    batch_id, schedule_id = str(uuid.uuid4()), str(uuid.uuid4())
    with sqlite3.connect(data_dir / "atelier.db") as db:
        image_id, thread_id, user_id = db.execute(
            "SELECT id, thread_id, user_id FROM images WHERE prompt_typed = ?", (prompt,)
        ).fetchone()
        db.execute(
            "INSERT INTO batches (id, user_id, thread_id, schedule_id, title, status, spec, "
            "estimate_usd, item_count, created_at, updated_at) VALUES (?, ?, ?, ?, "
            "'Morning lighthouses — run of Tue 01 Dec 08:00', 'done', '{}', 0.04, 1, "
            "'2026-12-01 08:00:00', '2026-12-01 08:00:00')",
            (batch_id, user_id, thread_id, schedule_id),
        )
        db.execute("UPDATE images SET batch_id = ? WHERE id = ?", (batch_id, image_id))
    return batch_id, image_id


def test_the_source_filter_and_a_batch_link(make_app, page: Page, page_errors, tmp_path):
    app = make_app()
    with signed_in(app, page, page_errors, tmp_path):
        send(page, "/image a red fox in the snow")
        expect(page.locator(".atl-tile")).to_have_count(1)
        send(page, "/image a lighthouse at dusk")
        expect(page.locator(".atl-tile")).to_have_count(2)
        batch_id, image_id = _file_under_a_schedule(app.data_dir, "a lighthouse at dusk")

        goto(page, f"{app.base_url}/gallery?origin=schedule")
        tiles = page.locator("#grid .g-tile")
        expect(tiles).to_have_count(1)
        expect(page.locator("#filters")).to_be_visible()  # opened: a filter applies
        source = page.locator("#filters-form select[name=origin]")
        expect(source).to_have_value("schedule")
        expect(page.locator("#filter-count")).to_have_text("1")
        save_screenshot(page, tmp_path, "gallery-source-schedules", height=None, settle_ms=400)

        source.select_option("chat")
        expect(page).to_have_url(f"{app.base_url}/gallery?origin=chat")
        expect(tiles).to_have_count(1)
        expect(tiles.first).not_to_contain_text("lighthouse")

        goto(page, f"{app.base_url}/gallery?batch={batch_id}")
        expect(tiles).to_have_count(1)
        expect(page.locator(f"#grid .g-tile a[href*='{image_id}']")).to_have_count(1)
        expect(page.locator("#batch-filter")).to_be_visible()
        expect(page.locator("#batch-filter input")).to_have_value(batch_id)
        save_screenshot(page, tmp_path, "gallery-one-batch", height=None, settle_ms=400)
        page.locator("#filters-clear").click()
        expect(tiles).to_have_count(2)
        expect(page.locator("#batch-filter")).to_be_hidden()
