"""Atelier's own face, in a real browser (issue 15: "your own face", "a first run that
draws"): the login page, what a wrong password says, the welcome each kind of user
gets, the starters, and the welcome of a server that cannot draw yet.

The app runs as a subprocess (`atelier run`) against the fake OpenAI server; Chromium
reaches nothing but 127.0.0.1. Screenshots go to the test's tmp_path and, when
ATELIER_SCREENSHOT_DIR is set, there too.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user, app_rows
from tests.browser_support import (
    browser_fixture,
    log_in,
    make_page,
    page_fixture,
    require_chromium,
    save_screenshot,
)
from tests.replicate_fixtures import replicate_app_env
from tests.waiting import wait_until_sync

require_chromium()

from playwright.sync_api import Browser, Locator, Page, expect  # noqa: E402

pytestmark = pytest.mark.slow

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)
PUBLIC = Path(__file__).resolve().parent.parent / "public"
WELCOME = "[data-step-type='system_message']"
STARTERS = "#starters button"
# Names of environment variables (OPENAI_API_KEY, ATELIER_DATA_DIR, ...).
ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b")
USER, USER_PASSWORD = "bea", "bea-password-for-tests"


# ------------------------------------------------------------------------------ fixtures

browser = browser_fixture()
# Wide enough for the login page's picture.
page = page_fixture(WAIT_MS)


@pytest.fixture
def no_local_extra(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without the `local` extra, on this one that has it.

    `sitecustomize` runs at the app's start-up: a None in sys.modules makes torch and
    diffusers unimportable, and `importlib.util.find_spec` (how the local backends ask)
    answers None for them, as when they are not installed.
    """
    folder = tmp_path / "no-local-extra"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\nsys.modules['torch'] = None\nsys.modules['diffusers'] = None\n"
    )
    return {"PYTHONPATH": str(folder)}


# ------------------------------------------------------------------------------- helpers


def _screenshot(page: Page, tmp_path: Path, name: str) -> None:
    save_screenshot(page, tmp_path, name, height=1400)


def _log_in(page: Page, app: AppProcess, name: str, password: str) -> None:
    log_in(page, name, password, at=f"{app.base_url}/login")


def _user_page(browser: Browser, app: AppProcess) -> Page:
    """The user's own page (a fresh context, its own cookies), signed in."""
    user_page = make_page(browser, WAIT_MS)
    _log_in(user_page, app, USER, USER_PASSWORD)
    return user_page


def _welcome(page: Page) -> Locator:
    welcome = page.locator(WELCOME).filter(has_text="Welcome to Atelier.")
    expect(welcome).to_be_visible()
    return welcome


def _loaded(image: Locator) -> None:
    expect(image).to_be_visible()
    image.evaluate("img => img.complete || new Promise(done => img.onload = done)")
    assert image.evaluate("img => img.naturalWidth") > 0


# --------------------------------------------------------------------------------- tests


def test_the_login_page_is_ateliers_and_says_when_the_password_is_wrong(
    make_app, page: Page, tmp_path: Path
):
    app = make_app()
    page.goto(f"{app.base_url}/login", wait_until="domcontentloaded")

    expect(page).to_have_title("Atelier")
    expect(page.get_by_role("heading", name="Sign in to Atelier")).to_be_visible()
    expect(page.locator("label[for='email']")).to_have_text("Username")
    username = page.locator("#email")
    expect(username).to_have_attribute("placeholder", "")
    expect(username).to_have_attribute("autocomplete", "username")
    expect(page.locator("#password")).to_have_attribute("autocomplete", "current-password")
    _loaded(page.locator("img.logo"))
    _loaded(page.locator("img[src='/public/login-studio.svg']"))
    shown = page.locator("body").inner_text()
    assert "chainlit" not in shown.lower() and "mail" not in shown.lower(), shown
    # The logo, in both themes, and the favicon are Atelier's files.
    for path, name in [
        ("/logo?theme=dark", "logo_dark.svg"),
        ("/logo?theme=light", "logo_light.svg"),
        ("/favicon", "favicon.svg"),
    ]:
        assert httpx.get(app.base_url + path).content == (PUBLIC / name).read_bytes(), path
    _screenshot(page, tmp_path, "login")

    page.fill("#email", "admin")
    page.fill("#password", "not-the-password")
    page.press("#password", "Enter")
    expect(page.get_by_role("alert").filter(has_text="Wrong username or password.")).to_be_visible()
    # Chainlit's client toasts the server's raw answer too; that toast is hidden.
    toast = page.locator("[data-sonner-toast]")
    expect(toast).to_have_count(1)
    assert not toast.is_visible()
    expect(page.get_by_text(re.compile("credentialssignin", re.I))).to_be_hidden()
    _screenshot(page, tmp_path, "login-wrong-password")
    assert page.context.cookies() == []


def test_the_administrator_sees_the_set_up_and_users_see_starters(
    make_app, fake_openai, browser: Browser, page: Page, tmp_path: Path
):
    app = make_app()
    add_user(app, USER, USER_PASSWORD)

    _log_in(page, app, "admin", ADMIN_PASSWORD)
    admin_welcome = _welcome(page).inner_text()
    for part in [
        "You are the administrator",
        "Chat model: gpt-test at 127.0.0.1",
        "Image backends: OpenAI (gpt-image-2)",
        "Storage: SQLite, files in " + str(app.data_dir.resolve()),
        "Not set up",
        "Replicate images and video: REPLICATE_API_TOKEN",
    ]:
        assert part in admin_welcome, (part, admin_welcome)
    _screenshot(page, tmp_path, "welcome-admin")

    user_page = _user_page(browser, app)
    user_welcome = _welcome(user_page).inner_text()
    assert "Describe the picture you want" in user_welcome, user_welcome
    assert ENV_NAME.findall(user_welcome) == [], user_welcome
    assert str(app.data_dir.resolve()) not in user_welcome and "/tmp" not in user_welcome
    assert "Chat model" not in user_welcome and "127.0.0.1" not in user_welcome
    starters = user_page.locator(STARTERS)
    expect(starters).to_have_text(
        [
            "Lighthouse in watercolour",
            "Photo of a fox in the snow",
            "Crayon apple",
            "Line-art sleeping cat",
        ]
    )
    _loaded(starters.first.locator("img"))
    _screenshot(user_page, tmp_path, "welcome-user-starters")

    # A starter sends its prompt as the user's message, and it is drawn in that style.
    starters.first.click()
    prompt = "Draw a lighthouse on a cliff at dusk in the watercolour style."
    expect(user_page.locator("[data-step-type='user_message']")).to_have_text(prompt)
    # The stored image (not a preview of it, which a slow moment can show first).
    expect(user_page.locator("[data-step-type] img[src*='/media/']").first).to_be_visible(
        timeout=60_000
    )
    expect(user_page.locator(STARTERS)).to_have_count(0)  # the welcome screen is gone
    _screenshot(user_page, tmp_path, "starter-sent")
    # The chat model got the prompt and drew it through refine_prompt with the preset.
    assert any(prompt in str(r.json) for r in fake_openai.requests_to("/chat/completions"))
    drawn = app_rows(app, "SELECT json_extract(parameters, '$.lineage') AS how FROM images")
    assert [row["how"] for row in drawn] == ['{"operation":"refine","style":"watercolour"}']
    sent = app_rows(app, "SELECT output FROM steps WHERE type = 'user_message'")
    assert [row["output"] for row in sent] == [prompt]
    user_page.context.close()


def test_with_no_key_the_welcome_says_how_to_get_images(
    make_app, browser: Browser, page: Page, no_local_extra: dict[str, str], tmp_path: Path
):
    app = make_app(OPENAI_API_KEY="", OPENAI_BASE_URL="", ATELIER_LLM_MODEL="", **no_local_extra)
    add_user(app, USER, USER_PASSWORD)

    _log_in(page, app, "admin", ADMIN_PASSWORD)
    welcome = _welcome(page)
    text = welcome.inner_text()
    for part in [
        "No image backend is set up yet",
        "set OPENAI_API_KEY",
        "REPLICATE_API_TOKEN",
        "run make run-local",
        "stabilityai/sd-turbo",
        "about 5 GB",
        "On a CPU",
    ]:
        assert part in text, (part, text)
    expect(page.locator(STARTERS)).to_have_count(0)  # nothing could be drawn from them
    _screenshot(page, tmp_path, "welcome-no-key-admin")

    user_page = _user_page(browser, app)
    text = _welcome(user_page).inner_text()
    assert "Image making is not set up on this server yet" in text, text
    assert ENV_NAME.findall(text) == [], text
    expect(user_page.locator(STARTERS)).to_have_count(0)
    _screenshot(user_page, tmp_path, "welcome-no-key-user")
    user_page.context.close()


def test_in_command_mode_a_starter_is_the_refine_command(
    make_app, page: Page, fake_replicate, tmp_path: Path
):
    """No chat model, only Replicate (the fake): the starter sends `/refine … --style
    watercolour`, which applies the preset's template as written."""
    app = make_app(
        OPENAI_API_KEY="",
        OPENAI_BASE_URL="",
        ATELIER_LLM_MODEL="",
        ATELIER_LOCAL_ENABLED="false",
        **replicate_app_env(fake_replicate),
    )
    _log_in(page, app, "admin", ADMIN_PASSWORD)
    assert "command mode" in _welcome(page).inner_text()
    page.locator("#starter-lighthouse-in-watercolour").click()
    expect(page.locator("[data-step-type='user_message']")).to_contain_text(
        "a lighthouse on a cliff at dusk --style watercolour"
    )
    images = "SELECT prompt_sent, backend FROM images"
    wait_until_sync(lambda: app_rows(app, images), 60, "the starter's image stored")
    expect(page.get_by_text("Image for", exact=False).last).to_be_visible()
    _screenshot(page, tmp_path, "starter-command-mode")
    [drawn] = app_rows(app, images)
    assert drawn["backend"] == "replicate"
    assert drawn["prompt_sent"].startswith(
        "a lighthouse on a cliff at dusk, loose watercolour painting"
    ), drawn["prompt_sent"]
