"""Shared by the browser tests: Debian's Chromium, headless, allowed to reach loopback only.

Playwright cannot download its own browser offline, so the tests drive /usr/bin/chromium
(`make chromium` installs it); a test module skips when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:  # Playwright is imported only where a browser is started
    from playwright.sync_api import Browser, Route

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
