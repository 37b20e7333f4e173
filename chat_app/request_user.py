"""The stored user a request's login token names, for the edge's own owner checks.

Chainlit resolves the user for its routes itself; the edge needs the same answer where
Chainlit gives none to the data layer (HTTP routes, the socket handshake), so the data
layer can check owners (memory/requester.py). A token that is forged, expired or names
a user who no longer exists names nobody; nothing here ever creates an account.
"""

from __future__ import annotations

from chainlit.auth.cookie import get_token_from_cookies
from chainlit.user import PersistedUser
from starlette.requests import cookie_parser
from starlette.types import Scope

from chat_app.runtime import get_runtime
from chat_app.session_guard import claims_of


def token_from_scope(scope: Scope) -> str | None:
    """The login token of an ASGI request: the cookie (chunked too), else a bearer token."""
    cookies: dict[str, str] = {}
    authorization = None
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            cookies.update(cookie_parser(value.decode("latin-1")))
        elif name == b"authorization":
            authorization = value.decode("latin-1")
    token = get_token_from_cookies(cookies)
    if token:
        return token
    if authorization:
        scheme, _, bearer = authorization.partition(" ")
        if scheme.lower() == "bearer" and bearer.strip():
            return bearer.strip()
    return None


def token_from_environ(environ: dict) -> str | None:
    """The login cookie of a Socket.IO handshake (Chainlit reads only the cookie there)."""
    header = environ.get("HTTP_COOKIE")
    return get_token_from_cookies(cookie_parser(header)) if header else None


async def stored_user(token: str | None) -> PersistedUser | None:
    """The user the token names, if it is valid and the user still exists."""
    claimed = claims_of(token)  # None if forged, expired or malformed
    if claimed is None:
        return None
    return await get_runtime().data_layer.get_user(claimed.identifier)
