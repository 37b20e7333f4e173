"""ASGI middleware: a login cookie whose session has ended counts as no login at all.

Placed in the parent app, so it sees every request before Chainlit and our routes do:
pages, API calls, uploads, `/media`, and the Socket.IO handshake (websocket or polling).
When a request carries a valid token (cookie, or `Authorization: Bearer`) whose server
session is unknown, revoked, expired or whose user is gone, the token is taken out of
the request, so every protected route answers 401 and the socket's connect is refused,
exactly as for a visitor who never logged in; the HTTP response also tells the browser
to delete the cookie. Public pages (the login page, assets) keep working, so the browser
can show the login form. Tokens that are not valid at all are left to Chainlit, which
refuses them itself.

`POST /logout` with a live session revokes it here before Chainlit clears the cookie.
If the database cannot answer, a request carrying a login fails (500) rather than pass
unchecked.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_app.session_guard import SessionGuard, claims_of, token_from_cookie_header
from core.logging_setup import get_logger

log = get_logger(__name__)

LOGOUT_PATH = "/logout"


def _cookie_name() -> str:
    # The same environment variable Chainlit's cookie module reads.
    return os.environ.get("CHAINLIT_AUTH_COOKIE_NAME", "access_token")


def _is_auth_cookie(name: str, base: str) -> bool:
    """Chainlit's cookie, or one of the numbered chunks of a long one."""
    return name == base or (name.startswith(base + "_") and name[len(base) + 1 :].isdigit())


def _without_auth_cookies(value: bytes) -> bytes:
    base = _cookie_name()
    kept = [
        part
        for part in value.decode("latin-1").split(";")
        if not _is_auth_cookie(part.split("=", 1)[0].strip(), base)
    ]
    return ";".join(kept).strip().encode("latin-1")


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _cookie_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    parts = [value.decode("latin-1") for name, value in headers if name == b"cookie"]
    return "; ".join(parts) if parts else None


class SessionMiddleware:
    def __init__(self, app: ASGIApp, guard: SessionGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        cookie_claims = claims_of(token_from_cookie_header(_cookie_header(headers)))
        bearer_claims = claims_of(_bearer(headers))
        drop_cookie = cookie_claims is not None and not await self.guard.allows(cookie_claims)
        drop_bearer = bearer_claims is not None and not await self.guard.allows(bearer_claims)

        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == LOGOUT_PATH:
            for claims, dropped in ((cookie_claims, drop_cookie), (bearer_claims, drop_bearer)):
                if claims is not None and not dropped:
                    await self.guard.end(claims)

        if not (drop_cookie or drop_bearer):
            await self.app(scope, receive, send)
            return

        refused = cookie_claims if drop_cookie else bearer_claims
        log.info("session_refused", user=refused.identifier if refused else None)
        is_http = scope["type"] == "http"  # a websocket handshake cannot set cookies
        clear_headers = self._clearing_headers(scope) if drop_cookie and is_http else []
        kept = []
        for name, value in headers:
            if name == b"cookie" and drop_cookie:
                value = _without_auth_cookies(value)
                if not value:
                    continue
            if name == b"authorization" and drop_bearer:
                continue
            kept.append((name, value))
        scope = {**scope, "headers": kept}
        if clear_headers:
            send = _appending(send, clear_headers)
        await self.app(scope, receive, send)

    @staticmethod
    def _clearing_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
        """Set-Cookie headers deleting the login cookie, with Chainlit's path and flags."""
        from chainlit.auth.cookie import clear_auth_cookie

        response = Response()
        clear_auth_cookie(Request(scope), response)
        return [(k, v) for k, v in response.raw_headers if k == b"set-cookie"]


def _appending(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """Add `extra` to the response headers, unless the response sets the cookie itself
    (a fresh login answered on the same request must keep its new cookie)."""
    base = _cookie_name().encode("latin-1")

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            sets_cookie = any(
                k == b"set-cookie" and v.lstrip().startswith(base) for k, v in headers
            )
            if not sets_cookie:
                message = {**message, "headers": headers + extra}
        await send(message)

    return wrapped
