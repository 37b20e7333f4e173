"""Server-side login sessions, so that a login cookie can be ended before it expires.

Chainlit's login cookie is a signed JWT that stays valid for its whole life (15 days by
default) whatever happens to the account. Each login therefore creates a row here, the
row's id travels inside the JWT, and the app honours a cookie only while its row is
*active*: present, not revoked, younger than the session lifetime, and owned by a user
that still exists. Logging out revokes the row; `atelier users passwd` revokes all of a
user's rows and `atelier users remove` deletes them with the user. The CLI runs in
another process, so revocation is a database write that the server reads back.

Rows are bound to the user's id, not the name: a user removed and added again under the
same name gets a new id, and the old cookies stay dead.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import NotFound
from memory.db import for_reads, write_session
from memory.ids import is_uuid
from memory.models import AuthSession, User, utcnow

# last_seen is a convenience for operators, not a security property: writing it on every
# request would turn each page load into a database write, so it is refreshed at most
# this often per session.
LAST_SEEN_EVERY = timedelta(minutes=5)
# Revoked rows are kept a while (an operator may want to see them), then purged.
KEEP_REVOKED = timedelta(days=1)


@dataclass(frozen=True)
class ActiveSession:
    id: str
    user_id: str
    identifier: str  # the user's current name, compared with the name in the cookie
    last_seen: datetime


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def revoke_all(session: AsyncSession, user_id: str) -> int:
    """Revoke every open session of a user, inside the caller's transaction."""
    result = await session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount or 0)


@functools.cache
def _active_query() -> Any:
    """Sessions by id, not revoked, with their user's name: asked for every request and
    socket, so built once (building it per call cost more than running it)."""
    session = AuthSession
    return (
        select(session.id, session.user_id, session.last_seen, session.created_at, User.identifier)
        .join(User, User.id == AuthSession.user_id)
        .where(
            AuthSession.id.in_(bindparam("ids", expanding=True)),
            AuthSession.revoked_at.is_(None),
        )
    )


class AuthSessionStore:
    def __init__(self, sessions: async_sessionmaker, max_age: timedelta) -> None:
        self._sessions = sessions
        self._max_age = max_age
        self._reads = for_reads(sessions.kw["bind"])  # checked on every request and event

    async def create(self, user_id: str) -> str:
        """A new session for a user; NotFound if the user was removed meanwhile."""
        row = AuthSession(user_id=user_id)
        async with write_session(self._sessions) as session:
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                raise NotFound("No such user.") from None
        return row.id

    async def active(self, session_id: str) -> ActiveSession | None:
        """The session if it may still be used; one primary-key lookup joined to users."""
        found = await self.active_many([session_id])
        return found.get(session_id)

    async def active_many(self, session_ids: Collection[str]) -> dict[str, ActiveSession]:
        """Those of `session_ids` that are active, in one query (the socket sweep's)."""
        ids = sorted({i for i in session_ids if is_uuid(i)})
        if not ids:
            return {}
        oldest = utcnow() - self._max_age
        # Core on the sessions' engine: a session's bookkeeping cost as much as the query.
        async with self._reads.connect() as conn:
            rows = (await conn.execute(_active_query(), {"ids": ids})).all()
        return {
            row.id: ActiveSession(row.id, row.user_id, row.identifier, _aware(row.last_seen))
            for row in rows
            if _aware(row.created_at) > oldest
        }

    async def user_exists(self, user_id: str) -> bool:
        async with self._sessions() as session:
            return await session.scalar(select(User.id).where(User.id == user_id)) is not None

    async def touch(self, found: ActiveSession) -> None:
        """Refresh last_seen if it is older than LAST_SEEN_EVERY (rarely a write)."""
        now = utcnow()
        if now - found.last_seen < LAST_SEEN_EVERY:
            return
        async with write_session(self._sessions) as session:
            await session.execute(
                update(AuthSession).where(AuthSession.id == found.id).values(last_seen=now)
            )

    async def revoke(self, session_id: str) -> bool:
        """End one session (logout); False if it was not open."""
        if not is_uuid(session_id):
            return False
        async with write_session(self._sessions) as session:
            result = await session.execute(
                update(AuthSession)
                .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return bool(result.rowcount)

    async def purge(self) -> int:
        """Delete rows that can never be used again (expired, or revoked a while ago)."""
        now = utcnow()
        async with write_session(self._sessions) as session:
            result = await session.execute(
                delete(AuthSession).where(
                    or_(
                        AuthSession.created_at < now - self._max_age,
                        AuthSession.revoked_at < now - KEEP_REVOKED,
                    )
                )
            )
        return int(result.rowcount or 0)
