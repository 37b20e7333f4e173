"""Chainlit's path check as plain ASGI, so a dropped request is not logged as a crash.

`mount_chainlit` wraps Chainlit's app in a `BaseHTTPMiddleware` ("ChainlitMiddleware")
that answers 404 outside the mount path. Starlette's `BaseHTTPMiddleware` raises
`RuntimeError("No response returned.")` whenever the app under it ends without a
response, and that is what a file response does when the browser drops the request
first (`FileResponse` stops at `http.disconnect`): every favicon, logo, avatar or
/public file the browser stops loading while a page changes was logged as a
60-line "Exception in ASGI application" traceback. The same check written as plain
ASGI passes the disconnect through; uvicorn then closes the connection quietly.
"""

from __future__ import annotations

import os

from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

_CHAINLIT_NAME = "ChainlitMiddleware"


class MountPathMiddleware:
    """404 for HTTP requests outside `prefix`, as Chainlit's own check answers them."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(self.prefix):
            await JSONResponse({"detail": "Not found"}, status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def mount_prefix() -> str:
    """The path Chainlit is mounted at, as `mount_chainlit` computes it."""
    path = os.environ.get("CHAINLIT_ROOT_PATH", "/")
    return os.environ.get("CHAINLIT_PARENT_ROOT_PATH", "") + path


def replace_path_check(chainlit_app: ASGIApp) -> None:
    """Swap Chainlit's `BaseHTTPMiddleware` path check for `MountPathMiddleware`.

    Call after mounting and before the first request (Starlette builds the middleware
    stack then; a later call would change nothing, so it raises). A Chainlit that no
    longer adds the middleware has nothing to swap.
    """
    if getattr(chainlit_app, "middleware_stack", None) is not None:
        raise RuntimeError("Chainlit's middleware stack is built already; swap it earlier.")
    stack: list[Middleware] = chainlit_app.user_middleware  # type: ignore[attr-defined]
    found = [
        index
        for index, entry in enumerate(stack)
        if entry.cls.__name__ == _CHAINLIT_NAME and issubclass(entry.cls, BaseHTTPMiddleware)
    ]
    for index in found:
        stack[index] = Middleware(MountPathMiddleware, prefix=mount_prefix())
