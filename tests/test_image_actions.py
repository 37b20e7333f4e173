"""Every image is actionable: the buttons on the images, in a real browser.

The app runs as a subprocess against the fake OpenAI (images) and the fake Replicate
(clips). A person asks for four foxes and, without typing a command or an id, varies the
third, keeps the first, downloads the second, edits the first and animates the fourth;
each click is checked where it lands: in the database (lineage, the star, the clip's
source) and in the downloaded file (its PNG text chunks). The same buttons work after
the conversation is reopened from the sidebar and after the app restarts; pressed by
another account with the first account's image id, they are refused in plain words.

Screenshots go to the test's tmp_path and, when ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from chat_app.image_actions import bigger_size
from memory.png_metadata import read_embedded
from pipelines.images.local_diffusers import SIZE_RANGE
from pipelines.images.openai_images import GPT_IMAGE_1, GPT_IMAGE_2
from tests.app_process import AppProcess, add_user, app_rows
from tests.browser_support import (
    SCREENSHOT_HEIGHT,
    browser_fixture,
    expect_decoded,
    expect_idle,
    page_errors_fixture,
    page_fixture,
    require_chromium,
    save_screenshot,
    send,
    signed_in,
)
from tests.chat_client import ChatSession, connected_session, outputs
from tests.replicate_fixtures import replicate_app_env
from tests.waiting import wait_until, wait_until_sync

require_chromium()

from playwright.sync_api import Download, Locator, Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)
THREAD_URL = re.compile(r"/thread/[0-9a-f-]{36}$")
TILES = ".atl-tile"
INTRUDER_PASSWORD = "mallory-password-1"

browser = browser_fixture()
# As tall as the screenshots, so taking one moves nothing from under the pointer.
page = page_fixture(WAIT_MS, height=SCREENSHOT_HEIGHT, accept_downloads=True)
page_errors = page_errors_fixture()


@pytest.fixture
def app(make_app, fake_replicate) -> AppProcess:
    """Images from the fake OpenAI, clips from the fake Replicate."""
    return make_app(**replicate_app_env(fake_replicate, ATELIER_LOCAL_ENABLED="0"))


# ------------------------------------------------------------------------------- helpers


def _tile(page: Page, image_id: str) -> Locator:
    """The buttons drawn over that image (the first place it is shown)."""
    return page.locator(f"{TILES}[data-image='{image_id}']").first


def _press(page: Page, image_id: str, name: str) -> None:
    """Point at the image, see its button appear, press it."""
    tile = _tile(page, image_id)
    tile.scroll_into_view_if_needed()
    page.locator(f"img[alt^='{image_id}']").first.hover()
    button = tile.get_by_role("button", name=name, exact=True)
    expect(button).to_have_css("opacity", "1")
    expect(button).to_be_enabled()
    button.click()


def _show_last_image(page: Page) -> None:
    """Scroll the chat to its newest image, for a screenshot."""
    box = page.locator("#chat-input").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] - 200)
    page.mouse.wheel(0, 50_000)
    page.wait_for_timeout(300)
    last = page.locator(f"div:has(> {TILES}) > img").last
    last.evaluate("img => img.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)


def _tile_ids(page: Page) -> list[str]:
    return [t.get_attribute("data-image") or "" for t in page.locator(TILES).all()]


def _images(app: AppProcess) -> list[dict]:
    sql = "select id, parent_id, prompt_typed, kept_at from images order by created_at, rowid"
    return [dict(row) for row in app_rows(app, sql)]


def _children(app: AppProcess, parent_id: str) -> list[dict]:
    return [row for row in _images(app) if row["parent_id"] == parent_id]


def _expect_rows(what: str, check: Callable[[], object]) -> None:
    wait_until_sync(check, WAIT_MS / 1000, what)


def _decoded(page: Page, count: int) -> None:
    images = page.locator(f"div:has(> {TILES}) > img")
    expect(images).to_have_count(count)
    expect_decoded(page, images, range(count))


def _boxes(page: Page, ids: list[str]) -> list[dict]:
    """Where those images are drawn on the page."""
    return [page.locator(f"img[alt^='{i}']").bounding_box() for i in ids]


def _expect_tool_step(page: Page, tool: str) -> None:
    expect(page.locator("[data-step-type='tool']").filter(has_text=tool)).to_be_visible()


def _download(page: Page, image_id: str) -> Download:
    """Point at the image and follow its Download link."""
    page.locator(f"img[alt^='{image_id}']").hover()
    with page.expect_download() as info:
        _tile(page, image_id).get_by_role("link", name="Download").click()
    return info.value


# --------------------------------------------------------------------------------- tests


def test_grid_vary_keep_download_edit_animate(
    app: AppProcess, page: Page, page_errors: list[str], tmp_path: Path
) -> None:
    with signed_in(app, page, page_errors, tmp_path):
        expect(page.locator("#chat-input")).to_be_visible()

        # A grid for --n 4: two columns, two rows, each image with its own buttons.
        send(page, "/image a fox in the snow --n 4")
        expect(page.locator(TILES)).to_have_count(4)
        _decoded(page, 4)
        ids = _tile_ids(page)
        assert ids == [row["id"] for row in _images(app)]  # the grid in request order
        boxes = _boxes(page, ids)
        assert len({round(b["x"]) for b in boxes}) == 2, boxes
        assert len({round(b["y"]) for b in boxes}) == 2, boxes
        assert boxes[0]["width"] > 250, boxes  # not thumbnails, not full width
        expect(page.locator("button[id^='atl-']").first).to_be_hidden()  # Chainlit's row
        expect_idle(page)
        save_screenshot(page, tmp_path, "1-grid")

        # Pointing at the third image shows its buttons; its details on demand.
        third = ids[2]
        page.locator(f"img[alt^='{third}']").hover()
        for name in ("Vary", "Edit", "Bigger", "Animate", "Keep", "Details", "Download"):
            expect(_tile(page, third).get_by_label(name, exact=True)).to_have_css("opacity", "1")
        expect(_tile(page, ids[0]).get_by_role("button", name="Vary")).to_have_css("opacity", "0")
        save_screenshot(page, tmp_path, "2-hover")
        _tile(page, third).get_by_role("button", name="Details").click()
        details = _tile(page, third).locator(".atl-details")
        expect(details).to_be_visible()
        expect(details).to_contain_text("a fox in the snow")
        expect(details).to_contain_text("openai gpt-image-2")
        expect(details).to_contain_text(re.compile(r"Cost\s*\$0\.\d{4}"))
        expect(details).to_contain_text(third)
        save_screenshot(page, tmp_path, "3-details")
        details.get_by_role("button", name="Close details").click()
        expect(details).to_be_hidden()

        # Vary on the third: its variations, derived from it.
        _press(page, third, "Vary")
        _expect_tool_step(page, "variations")
        expect(page.locator(TILES)).to_have_count(6)
        expect_idle(page)
        _expect_rows("two variations of the third", lambda: len(_children(app, third)) == 2)
        _decoded(page, 6)
        _show_last_image(page)
        save_screenshot(page, tmp_path, "4-after-vary")

        # Keep the first: starred in the database, and still after a reload.
        first = ids[0]
        _press(page, first, "Keep")
        expect(_tile(page, first).locator(".atl-kept")).to_be_visible()
        expect_idle(page)
        _expect_rows("the first kept", lambda: _images(app)[0]["kept_at"] is not None)
        page.reload(wait_until="domcontentloaded")
        expect(page.locator(TILES)).to_have_count(6)
        expect(_tile(page, first).locator(".atl-kept")).to_be_visible()
        expect(_tile(page, first).get_by_role("button", name="Kept")).to_have_css("opacity", "1")
        expect(_tile(page, ids[1]).locator(".atl-kept")).to_have_count(0)
        save_screenshot(page, tmp_path, "5-kept-after-reload")

        # Download the second: the original file, its parameters embedded.
        second = ids[1]
        download = _download(page, second)
        assert download.suggested_filename == f"atelier-{second[:8]}.png"
        chunks = read_embedded(Path(download.path()).read_bytes())
        assert "a fox in the snow" in chunks["parameters"]
        assert "Model: gpt-image-2" in chunks["parameters"]
        assert json.loads(chunks["atelier"])["image_id"] == second

        # Edit the first: asked what to change, the answer typed, the edit derived from it.
        _press(page, first, "Edit")
        expect(page.get_by_text("What should change in image")).to_be_visible()
        page.locator("#chat-input").fill("make the fox blue")
        page.locator("#chat-submit").click()
        _expect_tool_step(page, "edit_image")
        expect_idle(page)
        _expect_rows("the edit of the first", lambda: len(_children(app, first)) == 1)
        assert _children(app, first)[0]["prompt_typed"] == "make the fox blue"
        _show_last_image(page)
        save_screenshot(page, tmp_path, "6-after-edit")

        # Animate the fourth: a clip from the fake Replicate, made from that image.
        fourth = ids[3]
        _press(page, fourth, "Animate")
        video = page.locator("video")
        expect(video).to_have_count(1)
        expect_idle(page)
        clips = app_rows(app, "select source_image_id from videos")
        assert [row[0] for row in clips] == [fourth]
        video.scroll_into_view_if_needed()
        page.wait_for_function("v => v.readyState >= 1", arg=video.element_handle())
        save_screenshot(page, tmp_path, "7-after-animate")


def test_buttons_work_after_a_resume_and_a_restart(
    app: AppProcess, page: Page, page_errors: list[str], tmp_path: Path
) -> None:
    with signed_in(app, page, page_errors, tmp_path):
        expect(page.locator("#chat-input")).to_be_visible()
        send(page, "/image a heron at dawn --n 2")
        expect(page.locator(TILES)).to_have_count(2)
        expect(page).to_have_url(THREAD_URL)
        thread_url = page.url
        expect_idle(page)
        first, second = _tile_ids(page)

        # Reopened from the sidebar: the grid and its buttons are rebuilt from the store.
        page.goto(app.base_url, wait_until="domcontentloaded")
        expect(page.locator("#chat-input")).to_be_visible()
        page.locator("#thread-history").get_by_text(re.compile("heron")).click()
        expect(page).to_have_url(thread_url)
        expect(page.locator(TILES)).to_have_count(2)
        _decoded(page, 2)
        boxes = _boxes(page, [first, second])
        assert round(boxes[0]["y"]) == round(boxes[1]["y"]), boxes  # still side by side
        assert boxes[0]["x"] < boxes[1]["x"], boxes
        download = _download(page, first)  # the resumed image's link is a signed one
        chunks = read_embedded(Path(download.path()).read_bytes())
        assert json.loads(chunks["atelier"])["image_id"] == first
        _press(page, second, "Vary")
        expect(page.locator(TILES)).to_have_count(4)
        expect_idle(page)
        _expect_rows("variations after a resume", lambda: len(_children(app, second)) == 2)
        save_screenshot(page, tmp_path, "8-resumed-vary")

        # After a restart, the same page: Keep and Bigger run as before.
        app.restart()
        page.reload(wait_until="domcontentloaded")
        expect(page.locator(TILES)).to_have_count(4)
        _press(page, first, "Keep")
        expect(_tile(page, first).locator(".atl-kept")).to_be_visible()
        expect_idle(page)
        _press(page, first, "Bigger")
        _expect_tool_step(page, "fork_image")
        expect_idle(page)
        _expect_rows("a larger fork", lambda: len(_children(app, first)) == 1)
        size = app_rows(app, f"select width, height from images where parent_id = '{first}'")
        assert tuple(size[0]) == (1280, 1280)  # 1024 x 1.25, the next step of gpt-image-2
        assert _images(app)[0]["kept_at"] is not None
        save_screenshot(page, tmp_path, "9-after-restart-kept-bigger")


def test_curation_candidates_in_a_row_keep_overrules_and_the_lightbox_has_buttons(
    app: AppProcess, page: Page, page_errors: list[str], tmp_path: Path
) -> None:
    with signed_in(app, page, page_errors, tmp_path):
        send(page, "best of 4 crayon apples DISC_TEST")
        expect(page.get_by_text(re.compile(r"Curated 4 candidate\(s\), kept"))).to_be_visible()
        expect(page.locator(TILES)).to_have_count(4)
        _decoded(page, 4)
        expect_idle(page)
        ids = _tile_ids(page)
        boxes = _boxes(page, ids)
        assert len({round(b["y"]) for b in boxes}) == 1, boxes  # candidates side by side

        # Keep on a candidate the scores rejected: the user's choice, stored as such.
        verdicts = "select image_id, verdict, decided_by from curation_candidates"
        rejected = next(row[0] for row in app_rows(app, verdicts) if row[1] == "rejected")
        _press(page, rejected, "Keep")
        expect(_tile(page, rejected).locator(".atl-kept")).to_be_visible()
        expect_idle(page)
        chosen = {row[0]: tuple(row[1:]) for row in app_rows(app, verdicts)}
        assert chosen[rejected] == ("kept", "user")
        _tile(page, rejected).scroll_into_view_if_needed()
        save_screenshot(page, tmp_path, "10-curation-kept")

        # The lightbox shows the image with the same buttons; a press closes it and runs.
        page.locator(f"img.inline-image[alt^='{ids[0]}']").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.locator(TILES)).to_have_count(1)
        expect(dialog.get_by_role("button", name="Vary")).to_be_visible()
        save_screenshot(page, tmp_path, "11-lightbox")
        dialog.get_by_role("button", name="Vary").click()
        expect(dialog).to_have_count(0)
        expect(page.locator(TILES)).to_have_count(6)
        expect_idle(page)
        _expect_rows("variations of a candidate", lambda: len(_children(app, ids[0])) == 2)


def test_another_account_pressing_a_button_with_my_image_is_refused(app: AppProcess) -> None:
    """The browser's click is a POST of the action; forged with someone else's id.

    Spoken over Chainlit's protocol (tests/chat_client.py), in a thread of its own:
    Playwright's sync API holds this thread's event loop while the module's browser lives.
    """
    with ThreadPoolExecutor(1) as worker:
        worker.submit(asyncio.run, _forge_every_button(app)).result()


async def _forge_every_button(app: AppProcess) -> None:
    owner = await connected_session(app.base_url)
    await owner.send("/image a lantern")
    (mine,) = [row["id"] for row in _images(app)]
    await owner.close()

    add_user(app, "mallory", INTRUDER_PASSWORD)
    intruder = await connected_session(app.base_url, "mallory", INTRUDER_PASSWORD)
    await intruder.send("/help")  # a conversation of its own, as when a button is pressed
    names = ["atelier_vary", "atelier_edit", "atelier_bigger", "atelier_animate", "atelier_keep"]
    for name in [*names, "atelier_details"]:
        seen = len(intruder.order)
        _press_over_protocol(app, intruder, name, mine)

        def refused(seen: int = seen) -> bool:
            return any(
                f"No image with id {mine} in your conversations" in text
                for text in outputs([intruder.messages[i] for i in intruder.order[seen:]])
            )

        await wait_until(refused, 30, f"{name} to be refused")
    await intruder.close()
    rows = _images(app)
    assert [row["id"] for row in rows] == [mine]  # nothing made from it
    assert rows[0]["kept_at"] is None  # nor kept
    assert app_rows(app, "select count(*) from videos")[0][0] == 0
    said = outputs(list(intruder.messages.values()))
    assert not any("What should change" in text for text in said)  # refused before asking


def _press_over_protocol(app: AppProcess, chat: ChatSession, name: str, image_id: str) -> None:
    """What the browser sends when a button is pressed: the action, for this session."""
    action = {"name": name, "payload": {"image_id": image_id}, "label": "x", "id": f"atl-{name}"}
    answer = httpx.post(
        f"{app.base_url}/project/action",
        json={"sessionId": chat.session_id, "action": {**action, "forId": None}},
        headers={"Cookie": chat.cookie},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_a_button_asks_and_is_counted_as_a_typed_request(app: AppProcess) -> None:
    """Above the confirmation threshold, Vary asks first: Cancel makes and spends
    nothing; Confirm makes the variations and settles their cost in the ledger."""
    with ThreadPoolExecutor(1) as worker:
        worker.submit(asyncio.run, _vary_with_a_question(app)).result()


async def _vary_with_a_question(app: AppProcess) -> None:
    chat = await connected_session(app.base_url)
    await chat.send("/image a kite")
    (kite,) = [row["id"] for row in _images(app)]
    entries = "select status, image_id from ledger_entries"
    assert len(app_rows(app, entries)) == 1
    await chat.change_settings({"confirm_above_usd": "0.01"})

    chat.ask_answer = "cancel_spend"
    _press_over_protocol(app, chat, "atelier_vary", kite)
    await wait_until(
        lambda: any("nothing was spent" in text for text in outputs(chat.messages.values())),
        30,
        "the cancelled variations",
    )
    assert len(chat.asks) == 1 and "Go ahead?" in chat.asks[0]["msg"]["output"]
    assert _children(app, kite) == [] and len(app_rows(app, entries)) == 1

    chat.ask_answer = "confirm_spend"
    _press_over_protocol(app, chat, "atelier_vary", kite)
    await wait_until(lambda: len(_children(app, kite)) == 2, 30, "the confirmed variations")

    def settled() -> bool:
        rows = app_rows(app, entries)
        return len(rows) == 2 and rows[1]["status"] == "settled"

    await wait_until(settled, 30, "the variations' cost settled")
    assert len(chat.asks) == 2
    assert app_rows(app, entries)[1]["image_id"] in {row["id"] for row in _children(app, kite)}
    await chat.close()


@pytest.mark.parametrize(
    ("caps", "size", "bigger"),
    [
        (GPT_IMAGE_2, (1024, 1024), "1280x1280"),  # a step up in its range
        (GPT_IMAGE_2, (1536, 1024), "1920x1280"),
        (GPT_IMAGE_2, (1920, 1920), "2048x2048"),  # the listed size is the nearer step
        (GPT_IMAGE_2, (2560, 2560), None),  # 3200x3200 is past its pixel limit
        (GPT_IMAGE_1, (1024, 1024), None),  # 1536x1024 is another shape, not bigger
        (None, (512, 768), "640x960"),  # local diffusers: any multiple of 8 to 2048
    ],
)
def test_bigger_is_the_next_size_of_the_same_shape(caps, size, bigger) -> None:  # noqa: ANN001
    from pipelines.images.base import Capabilities

    caps = caps or Capabilities(sizes=("512x512",), size_range=SIZE_RANGE)
    assert bigger_size(caps, *size) == bigger
