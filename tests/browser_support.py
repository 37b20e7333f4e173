"""Shared by the browser tests: Debian's Chromium, headless, allowed to reach loopback only.

Playwright cannot download its own browser offline, so the tests drive /usr/bin/chromium
(`make chromium` installs it); a test module skips when it is missing.

A browser test module starts with `require_chromium()`, then takes its fixtures from the
factories here (`browser = browser_fixture()`, `page = page_fixture(WAIT_MS)`, ...), so
every module opens pages the same way: a fresh context, one wait for everything, and no
request off loopback.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.app_process import ADMIN_PASSWORD, AppProcess, app_errors

if TYPE_CHECKING:  # Playwright is imported only where a browser is started
    from playwright.sync_api import Browser, Locator, Page, Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_MISSING = f"{CHROMIUM} is missing (Debian's chromium package; `make chromium`)"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCALHOST = ("127.0.0.1", "localhost")
WIDTH = 1280
# Tall enough that a screenshot shows a whole thread (the chat scrolls in its own pane).
SCREENSHOT_HEIGHT = 1800


def require_chromium() -> None:
    """Skip the calling test module (call it at module level) when Chromium is missing."""
    if not CHROMIUM.exists():
        pytest.skip(CHROMIUM_MISSING, allow_module_level=True)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def only_hosts(*hosts: str):  # noqa: ANN201 - a Playwright route handler
    """A route handler that lets requests to `hosts` through and aborts the rest: no test
    reaches the internet (Chainlit's page links fonts and stylesheets from CDNs)."""

    def route(route: Route) -> None:
        if urlsplit(route.request.url).hostname in hosts:
            route.continue_()
        else:
            route.abort()

    return route


localhost_only = only_hosts(*LOCALHOST)


# ------------------------------------------------------------------------ pages, fixtures


def make_page(browser: Browser, wait_ms: int, *, height: int = 900, **options: Any) -> Page:
    """A page in a fresh context (its own cookies) that waits up to `wait_ms` for anything
    and reaches loopback only. `options` go to `new_context` (e.g. accept_downloads);
    the caller closes it with `page.context.close()`."""
    context = browser.new_context(viewport={"width": WIDTH, "height": height}, **options)
    context.set_default_timeout(wait_ms)
    context.set_default_navigation_timeout(wait_ms)
    context.route("**/*", localhost_only)
    return context.new_page()


def browser_fixture(scope: str = "module") -> Callable[..., Iterator[Browser]]:
    """A module's `browser` fixture: one Chromium for all its tests (`scope="function"`:
    one per test)."""

    @pytest.fixture(scope=scope, name="browser")
    def fixture() -> Iterator[Browser]:
        with chromium() as browser:
            yield browser

    return fixture


def page_fixture(wait_ms: int, *, height: int = 900, **options: Any) -> Callable[..., Any]:
    """A module's `page` fixture: a fresh page of its `browser` per test (see make_page)."""

    @pytest.fixture(name="page")
    def fixture(browser: Browser) -> Iterator[Page]:
        page = make_page(browser, wait_ms, height=height, **options)
        try:
            yield page
        finally:
            page.context.close()

    return fixture


def page_errors_fixture() -> Callable[..., list[str]]:
    """A module's `page_errors` fixture: the uncaught JavaScript errors on its `page`."""

    @pytest.fixture(name="page_errors")
    def fixture(page: Page) -> list[str]:
        return collect_page_errors(page)

    return fixture


def collect_page_errors(page: Page) -> list[str]:
    """A list that fills with the page's uncaught JavaScript errors from now on."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


# ------------------------------------------------------------------------------ actions


def goto(page: Page, url: str) -> None:
    """Open `url`, done at DOMContentLoaded: the load event waits on nothing we need."""
    page.goto(url, wait_until="domcontentloaded")


def log_in(
    page: Page, name: str = "admin", password: str = ADMIN_PASSWORD, *, at: str | None = None
) -> None:
    """Sign in through the login form as a person does (after opening `at`, if given)."""
    from playwright.sync_api import expect

    if at is not None:
        goto(page, at)
    expect(page.locator("#email")).to_be_visible()
    page.fill("#email", name)
    page.fill("#password", password)
    page.press("#password", "Enter")


def expect_idle(page: Page) -> None:
    """The turn in progress has ended: its stop button is gone."""
    from playwright.sync_api import expect

    expect(page.locator("#stop-button")).to_have_count(0)


def send(page: Page, text: str) -> None:
    """Type and send once the previous turn has ended (its stop button is gone)."""
    from playwright.sync_api import expect

    expect_idle(page)
    page.locator("#chat-input").fill(text)
    submit = page.locator("#chat-submit")
    expect(submit).to_be_enabled()
    submit.click()


def expect_decoded(page: Page, images: Locator, indexes: Iterable[int]) -> None:
    """Those images are really decoded by the browser (not just present)."""
    for index in indexes:
        image = images.nth(index)
        image.scroll_into_view_if_needed()  # the front end marks them loading="lazy"
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )


# ---------------------------------------------------------------- screenshots, failures


def save_screenshot(
    page: Page,
    tmp_path: Path,
    name: str,
    *,
    height: int | None = SCREENSHOT_HEIGHT,
    settle_ms: int = 300,
    copy_to: Path | None = None,
) -> Path:
    """`name`.png in tmp_path, and a copy in `copy_to` or ATELIER_SCREENSHOT_DIR when set.

    The chat scrolls inside its own pane, so the viewport is made `height` tall for the
    shot (None: left as it is), then put back; `settle_ms` lets the layout settle.
    """
    path = tmp_path / f"{name}.png"
    size = page.viewport_size
    if height is not None:
        page.set_viewport_size({"width": WIDTH, "height": height})
    if settle_ms:
        page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(path), animations="disabled")
    if height is not None and size:
        page.set_viewport_size(size)
    target = copy_to or _screenshot_dir()
    if target:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def _screenshot_dir() -> Path | None:
    target = os.environ.get("ATELIER_SCREENSHOT_DIR")
    return Path(target) if target else None


@contextmanager
def on_failure_show(app: AppProcess, page: Page, tmp_path: Path) -> Iterator[None]:
    """On failure: a screenshot, and the app's error log lines (conftest prints only
    logs that hold a Traceback)."""
    try:
        yield
    except BaseException:
        for line in app_errors(app):
            print(f"app log: {line}")
        with suppress(Exception):  # the page may be gone; the original error matters more
            print(f"failure screenshot: {save_screenshot(page, tmp_path, 'failure')}")
        raise


@contextmanager
def signed_in(
    app: AppProcess, page: Page, page_errors: list[str], tmp_path: Path
) -> Iterator[None]:
    """The administrator signed in on the app's start page, with on_failure_show; when the
    block ends well, the page raised no JavaScript error and the app logged no error."""
    with on_failure_show(app, page, tmp_path):
        goto(page, app.base_url)
        log_in(page)
        yield
    assert page_errors == [], page_errors
    errors = app_errors(app)
    assert errors == [], errors
