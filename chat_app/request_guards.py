"""Wiring of the guards in front of Chainlit's HTTP routes and socket (issue 12).

Two steps, because FastAPI matches routes in the order they were added and Chainlit is
mounted at `/` last:

- `add_routes` (before mounting): our versions of Chainlit's upload, feedback, element
  and action routes, which take precedence over Chainlit's;
- `add_guards` (after mounting, before the login middleware is added so that it runs
  inside it and sees only live logins): clean 4xx for the client's errors in both apps,
  the socket handshake's id checks, empty messages answered before Chainlit stores
  them, the requester of HTTP calls for the data layer, and Chainlit's path check as
  plain ASGI (a dropped request is not a crash in the log: chainlit_middleware.py).

The security headers go outermost (`add_security_headers`, added last), so every
response carries them, refusals included.
"""

from __future__ import annotations

from fastapi import FastAPI

from chat_app import (
    chainlit_middleware,
    empty_messages,
    feedback_routes,
    http_errors,
    session_routes,
    socket_ids,
    upload_route,
)
from chat_app.requester_middleware import RequesterMiddleware
from chat_app.security_headers import SecurityHeadersMiddleware, chainlit_page_hashes
from chat_app.settings import Settings


def add_routes(app: FastAPI, settings: Settings) -> None:
    uploads = upload_route.UploadSlots.from_settings(settings)
    app.include_router(upload_route.create_router(settings.uploads_per_user, uploads))
    app.include_router(feedback_routes.router)
    app.include_router(session_routes.router)


def add_guards(app: FastAPI) -> None:
    from chainlit.server import app as chainlit_app
    from chainlit.server import sio

    http_errors.install(app, chainlit_app)
    chainlit_middleware.replace_path_check(chainlit_app)
    socket_ids.install(sio)
    empty_messages.install(sio)
    app.add_middleware(RequesterMiddleware)


def add_security_headers(app: FastAPI) -> None:
    app.add_middleware(SecurityHeadersMiddleware, script_hashes=chainlit_page_hashes())
