"""A batch in a real browser: the progress message, Pause, Resume, the summary.

The app runs as a subprocess against the fake OpenAI, whose images answer after a delay
so the batch is seen running. A person types `/batch` with a list, confirms once, watches
the task list move, presses Pause (the message says paused and offers Resume), presses
Resume, and ends with the summary, its contact sheet (decoded by the browser) and the
zip link, which downloads. The rows say the same at each step.

Screenshots go to the test's tmp_path and, when ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from tests.app_process import AppProcess, app_rows
from tests.browser_support import (
    SCREENSHOT_HEIGHT,
    browser_fixture,
    expect_decoded,
    page_errors_fixture,
    page_fixture,
    require_chromium,
    save_screenshot,
    send,
    signed_in,
)
from tests.waiting import wait_until_sync

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
# The fake answers 500 to FAIL_SERVER: that item fails, with its reason in the summary.
ITEMS = "apple, pear, red bicycle, tabby cat, FAIL_SERVER kettle, sailing boat, oak tree, violin"

browser = browser_fixture()
page = page_fixture(WAIT_MS, height=SCREENSHOT_HEIGHT, accept_downloads=True)
page_errors = page_errors_fixture()


def _status(app: AppProcess) -> str:
    [row] = app_rows(app, "SELECT status FROM batches")
    return row["status"]


def test_progress_pause_resume_and_summary(
    make_app, fake_openai, page: Page, page_errors: list[str], tmp_path: Path
):
    # One OpenAI request at a time, each 2.5 s: the batch runs about 20 s, so Pause lands
    # while it runs. With the default four in flight, the second wave of four ended
    # within 2.5 s of the first "done" and, on a loaded CI, before the click arrived.
    app = make_app(
        ATELIER_MAX_RETRIES="0", ATELIER_BATCH_ERROR_RETRIES="1", ATELIER_OPENAI_CONCURRENCY="1"
    )
    fake_openai.latency_s = 2.5
    with signed_in(app, page, page_errors, tmp_path):
        send(page, f"/batch {ITEMS} --style photo")
        expect(page.get_by_text(re.compile(r"Start the batch"))).to_be_visible()
        page.get_by_role("button", name="Confirm").click()
        progress = page.locator("[data-step-type='assistant_message']").filter(
            has_text="Now making"
        )
        expect(progress).to_be_visible()
        expect(progress).to_contain_text("done")
        save_screenshot(page, tmp_path, "batch-1-progress")

        page.get_by_role("button", name="Pause").click()
        wait_until_sync(lambda: _status(app) == "paused", 30, "the batch to be paused")
        paused = page.locator("[data-step-type='assistant_message']").filter(has_text="Paused")
        expect(paused).to_be_visible()
        expect(page.get_by_role("button", name="Resume")).to_be_visible()
        expect(page.get_by_role("button", name="Pause")).to_have_count(0)
        save_screenshot(page, tmp_path, "batch-2-paused")

        page.get_by_role("button", name="Resume").click()
        wait_until_sync(lambda: _status(app) == "done", 60, "the batch to finish")
        summary = page.locator("[data-step-type='assistant_message']").filter(
            has_text="Batch finished"
        )
        expect(summary).to_be_visible()
        expect(summary).to_contain_text("7 of 8 done, 1 failed")
        expect(summary).to_contain_text("FAIL_SERVER kettle: Provider error")
        expect(page.get_by_role("button", name="Resume")).to_have_count(0)
        expect(page.get_by_role("button", name="Stop")).to_have_count(0)
        sheet = summary.locator("img[alt^='contact-sheet-']")
        expect(sheet).to_have_count(1)
        expect_decoded(page, sheet, [0])
        save_screenshot(page, tmp_path, "batch-3-finished")

        with page.expect_download() as download:
            summary.get_by_role("link", name="Download the zip").click()
        archive = zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes()))
        assert "manifest.csv" in archive.namelist()
        assert sum(name.endswith(".png") for name in archive.namelist()) == 7
