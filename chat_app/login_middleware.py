"""ASGI middleware on `POST /login`: refuse locked accounts and addresses with 429.

Chainlit's password callback can only answer "user" or "no user" (401), so the limit
lives in front of it, in the parent app. The form is read here (it is small; larger
bodies are refused), the limiter is asked first, and only then does Chainlit verify
the password; its answer (401 or success) is what gets counted. A refused attempt never
reaches the password hash, so a guessing burst costs the server almost nothing.

The Chainlit login page shows the 429's `detail` in its error toast ("Too Many Requests:
Too many failed logins ... Try again in 15 minutes.").
"""

from __future__ import annotations

import json

from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_app.login_limits import LoginLimiter

LOGIN_PATH = "/login"
MAX_FORM_BYTES = 16 * 1024  # a user name and a password (at most 1024 characters)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if it is larger than `limit`."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if len(body) > limit:
            return None
        if not message.get("more_body", False):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the already-read body, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _username(scope: Scope, body: bytes, receive: Receive) -> str:
    request = Request(scope, _replay(body, receive))
    try:
        form = await request.form()
    except (MultiPartException, ValueError, KeyError):
        return ""  # Chainlit answers a malformed form itself (422)
    try:
        value = form.get("username")
        return value if isinstance(value, str) else ""
    finally:
        await form.close()


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str]) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class LoginLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: LoginLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == LOGIN_PATH
        ):
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive, MAX_FORM_BYTES)
        except ClientDisconnect:
            return
        if body is None:
            await _answer(send, 413, "The login form is too large.", {})
            return
        account = await _username(scope, body, receive)
        address = (scope.get("client") or ("unknown", 0))[0]

        lockout = await self.limiter.refusal(account, address)
        if lockout is not None:
            await _answer(send, 429, lockout.message, {"Retry-After": str(lockout.retry_after_s)})
            return

        status = 0

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self.limiter.checking(account, address):
            await self.app(scope, _replay(body, receive), recording)
        if status == 401:
            await self.limiter.failed(account, address)
        elif 200 <= status < 300:
            await self.limiter.succeeded(account)
