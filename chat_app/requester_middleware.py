"""ASGI middleware: HTTP calls that reach the data layer say who is asking.

Chainlit's REST routes (feedback, a thread, an element, rename, delete) call the data
layer with no Chainlit context, so the data layer cannot see the user Chainlit has just
authenticated. This runs each such request inside `acting_as(<the cookie's user>)`; the
data layer then checks owners as it does in a socket session, and a request with no
valid login reaches it as nobody and is refused (memory/requester.py).

Only the path prefixes that reach the data layer are looked up (one indexed user query
each); pages, assets and the socket are left alone.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from chat_app.request_user import stored_user, token_from_scope
from memory.requester import acting_as

DATA_PATHS = ("/project/", "/feedback")


class RequesterMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(DATA_PATHS):
            await self.app(scope, receive, send)
            return
        user = await stored_user(token_from_scope(scope))
        if user is None:
            await self.app(scope, receive, send)
            return
        with acting_as(user.identifier, user.id):
            await self.app(scope, receive, send)
