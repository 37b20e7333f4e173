"""Is this login cookie still good? The one answer that HTTP requests and sockets share.

Chainlit's cookie is a signed JWT; signature and expiry say nothing about whether the
user has since logged out, changed password or been removed. At login the app records a
server-side session (memory/auth_sessions.py) and puts its id in the JWT's user metadata
(`SESSION_CLAIM`, which Chainlit signs into the token with the rest of `cl.User`). A
token is honoured only while that session is active and belongs to the user the token
names.

Cost and delay: the answer for a session is cached in this process for `CACHE_SECONDS`
(1 s), so a page load that fetches dozens of assets makes one indexed lookup, not dozens.
A revocation made in this process (logout) takes effect at once; one made by the CLI in
another process is seen by new requests within `CACHE_SECONDS`, and by open sockets at
their next event or at the next sweep (chat_app/socket_guard.py, every 2 s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import jwt
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import cookie_parser

from core.logging_setup import get_logger
from memory.auth_sessions import AuthSessionStore

log = get_logger(__name__)

SESSION_CLAIM = "session"  # key in cl.User.metadata, and so in the JWT
CACHE_SECONDS = 1.0
_CACHE_LIMIT = 10_000  # entries; a flood of distinct sessions empties it, never grows it


@dataclass(frozen=True)
class Claims:
    """What a valid (signed, unexpired) token says."""

    identifier: str
    session_id: str | None  # None for tokens made before sessions existed


# token -> (its claims, when it expires (epoch seconds), the secret it was checked with)
_verified: dict[str, tuple[Claims, float, str]] = {}


def claims_of(token: str | None) -> Claims | None:
    """The token's claims, or None if it is not a valid token (forged, expired, garbled).

    A token's signature is checked once and its claims kept until it expires: every
    socket event, every request and the socket sweep (each socket every 2 s) ask again,
    and PyJWT's decode was 5 % of the event loop at 50 sessions. Whether the session
    behind a token is still active is SessionGuard's question, asked every time.
    """
    if not token:
        return None
    from chainlit.auth.jwt import get_jwt_secret

    secret = get_jwt_secret() or ""
    known = _verified.get(token)
    if known is not None and known[2] == secret:
        claims, expires, _ = known
        return claims if time.time() < expires else None
    try:
        # As chainlit.auth.jwt.decode_jwt checks it, keeping the expiry it drops.
        payload = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["exp"]})
        identifier = payload["identifier"]
        metadata = payload.get("metadata") or {}
        expires = float(payload["exp"])
    except (jwt.InvalidTokenError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if not isinstance(identifier, str) or not isinstance(metadata, dict):
        return None
    session_id = metadata.get(SESSION_CLAIM)
    claims = Claims(identifier, session_id if isinstance(session_id, str) else None)
    if len(_verified) >= _CACHE_LIMIT:
        _verified.clear()  # a flood of distinct tokens empties it, never grows it
    _verified[token] = (claims, expires, secret)
    return claims


def token_from_cookie_header(header: str | None) -> str | None:
    """The login token in a Cookie header, as Chainlit reads it (chunked cookies too)."""
    if not header:
        return None
    from chainlit.auth.cookie import get_token_from_cookies

    return get_token_from_cookies(cookie_parser(header))


class SessionGuard:
    def __init__(
        self,
        store: AuthSessionStore,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._clock = clock
        # session id -> (the owner's current name, or None if not active; when checked)
        self._cache: dict[str, tuple[str | None, float]] = {}
        # Set when a session ends here, so the socket sweep runs at once.
        self.ended = asyncio.Event()

    async def allows(self, claims: Claims | None) -> bool:
        """True if a token with these claims may be used now."""
        if claims is None or claims.session_id is None:
            return False
        owner = await self._owner(claims.session_id)
        return owner is not None and owner == claims.identifier

    async def _owner(self, session_id: str) -> str | None:
        cached = self._cache.get(session_id)
        now = self._clock()
        if cached is not None and now - cached[1] < self._cache_seconds:
            return cached[0]
        found = await self._store.active(session_id)
        self._remember({session_id: found.identifier if found else None})
        if found is not None:
            try:
                await self._store.touch(found)
            except SQLAlchemyError as exc:  # last_seen is for operators; never fail on it
                log.warning("session_touch_failed", error=type(exc).__name__)
        return found.identifier if found else None

    async def refresh(self, session_ids: Collection[str]) -> dict[str, str]:
        """Owners of those sessions that are active, in one query; refreshes the cache."""
        found = await self._store.active_many(session_ids)
        active = {sid: session.identifier for sid, session in found.items()}
        self._remember({sid: active.get(sid) for sid in session_ids})
        return active

    async def user_exists(self, user_id: str) -> bool:
        return await self._store.user_exists(user_id)

    async def end(self, claims: Claims) -> None:
        """Logout: revoke the token's session; sockets using it are cut at the next sweep."""
        if claims.session_id is None:
            return
        if await self._store.revoke(claims.session_id):
            log.info("logout", user=claims.identifier)
        self._remember({claims.session_id: None})
        self.ended.set()

    def _remember(self, owners: dict[str, str | None]) -> None:
        if len(self._cache) + len(owners) > _CACHE_LIMIT:
            self._cache.clear()
        now = self._clock()
        for session_id, owner in owners.items():
            self._cache[session_id] = (owner, now)
