"""What a person sees of the issue 15 first-run fixes, in Chromium (Playwright).

A command picked from the `/` menu runs and names its conversation; an image's estimate
is one quiet line with the range of quality tiers; the sidebar titles a conversation by
its prompt; someone else's conversation is called unavailable in plain words, and the
page stays usable. The app runs as a subprocess against the fake OpenAI server.

Screenshots go to the test's tmp_path and, when ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.app_process import ADMIN_PASSWORD, add_user
from tests.browser_support import (
    browser_fixture,
    goto,
    log_in,
    page_fixture,
    require_chromium,
    save_screenshot,
)
from tests.chat_client import connected_session

require_chromium()

from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)
UNAVAILABLE = "This conversation does not exist, or it belongs to another account."

browser = browser_fixture()
page = page_fixture(WAIT_MS)


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    save_screenshot(page, tmp_path, name, height=None)


def _log_in(page: Page, base_url: str, name: str, password: str) -> None:
    log_in(page, name, password, at=base_url)
    expect(page.locator("#chat-input")).to_be_visible()


def _sidebar(page: Page):
    return page.locator("#thread-history")


def test_a_command_from_the_menu_runs_and_names_its_conversation(
    make_app, page: Page, tmp_path: Path
):
    app = make_app()
    _log_in(page, app.base_url, "admin", ADMIN_PASSWORD)
    chat_input = page.locator("#chat-input")
    chat_input.fill("/cos")
    page.get_by_role("option").filter(has_text="cost").first.click()
    expect(chat_input).to_have_text("")  # the command became a chip; no text is typed
    _shot(page, tmp_path, "1-command-chip")
    page.locator("#chat-submit").click()
    expect(page.get_by_text(re.compile(r"Cost report"))).to_be_visible()
    expect(page.get_by_text(re.compile("Your message is empty"))).to_have_count(0)
    expect(_sidebar(page).get_by_text("Spending report", exact=True)).to_be_visible()
    expect(_sidebar(page).get_by_text("Untitled Conversation")).to_have_count(0)
    _shot(page, tmp_path, "2-command-answered-and-titled")


def test_an_image_estimate_is_one_quiet_line_and_the_title_is_the_prompt(
    make_app, page: Page, tmp_path: Path
):
    app = make_app()
    _log_in(page, app.base_url, "admin", ADMIN_PASSWORD)
    page.locator("#chat-input").fill("/image a fox in the snow --size 1024x1024")
    page.locator("#chat-submit").click()
    line = page.get_by_text(
        "Estimated cost of 1 image with OpenAI gpt-image-2: $0.006–$0.211 "
        "(the provider picks the quality tier)."
    )
    expect(line).to_be_visible()
    message = line.locator("xpath=ancestor::*[@data-step-type][1]")
    expect(message.locator("strong")).to_have_count(0)  # quiet: not bold, no bullets
    expect(message.locator("li")).to_have_count(0)
    expect(_sidebar(page).get_by_text("a fox in the snow", exact=True)).to_be_visible()
    expect(_sidebar(page).get_by_text(re.compile("--size"))).to_have_count(0)
    _shot(page, tmp_path, "3-estimate-line-and-title")


def test_someone_elses_conversation_is_called_unavailable(make_app, page: Page, tmp_path: Path):
    app = make_app()

    async def admins_conversation() -> str:
        chat = await connected_session(app.base_url)
        await chat.send("/help")
        await chat.close()
        assert chat.thread_id is not None
        return chat.thread_id

    with ThreadPoolExecutor(1) as other:  # Playwright's own loop runs in this thread
        thread_id = other.submit(asyncio.run, admins_conversation()).result()
    add_user(app, "bob", "bobs-password")
    _log_in(page, app.base_url, "bob", "bobs-password")
    goto(page, f"{app.base_url}/thread/{thread_id}")
    expect(page.get_by_text(f"Couldn't resume chat: {UNAVAILABLE}")).to_be_visible()
    expect(page.get_by_text("Could not reach the server")).to_have_count(0)
    _shot(page, tmp_path, "4-not-yours")
    # The page still works: Bob's own chat answers.
    page.locator("#chat-input").fill("/help")
    page.locator("#chat-submit").click()
    expect(page.get_by_text(re.compile(r"What Atelier can do|Commands")).first).to_be_visible()
    _shot(page, tmp_path, "5-not-yours-then-own-chat")
