"""API tokens: per-user keys for the HTTP API, kept as hashes, checked on every request.

A token is `atl_` + 43 URL-safe characters (256 random bits). It is shown once, when it
is made; the database keeps its SHA-256 (a slow password hash buys nothing against a
256-bit secret, and a fast one lets a request find its row by one index lookup) and its
first characters, so a list can tell tokens apart without revealing them.

Every request reads the row again (`authenticate`): a token revoked, expired, or whose
user was removed stops working at the next request, in every app process, with nothing
cached. The CLI (`atelier tokens`) and the app write the same table.

Another user's token id is NotFound, with the same words as an id that does not exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.errors import InvalidInput, NotFound
from memory.db import write_session
from memory.ids import is_uuid
from memory.models import ApiToken, User, utcnow

TOKEN_PREFIX = "atl_"
_TOKEN = re.compile(r"^atl_[A-Za-z0-9_-]{43}$")
VISIBLE_CHARS = 12  # "atl_" + 8: enough to recognise, far too few to guess the rest
MAX_NAME = 64
MAX_EXPIRES_DAYS = 3650
# Active tokens one user may hold: enough for every tool they use, bounded so that a
# script cannot fill the table.
MAX_ACTIVE_PER_USER = 50
# last_used_at is for the user's list, not a security property: written at most this
# often per token, so a busy client does not turn every request into a write.
LAST_USED_EVERY = timedelta(minutes=1)
_NO_SUCH_TOKEN = "No such API token."


@dataclass(frozen=True)
class ApiCaller:
    """Who an API request acts for: the token's user, and the token (for its limits)."""

    user_id: str
    user_name: str
    token_id: str
    token_name: str


@dataclass(frozen=True)
class ApiTokenRecord:
    """A token as its owner may see it: never the token itself, nor its hash."""

    id: str
    user_id: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def status(self) -> str:
        """ "active", "revoked" or "expired"."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        return "active"


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _record(row: ApiToken) -> ApiTokenRecord:
    return ApiTokenRecord(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        created_at=_aware(row.created_at) or utcnow(),
        expires_at=_aware(row.expires_at),
        last_used_at=_aware(row.last_used_at),
        revoked_at=_aware(row.revoked_at),
    )


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_token_name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise InvalidInput("Give the token a name (what will use it), e.g. 'open-webui'.")
    if len(name) > MAX_NAME or not name.isprintable():
        raise InvalidInput(f"Token names are at most {MAX_NAME} printable characters.")
    return name


def check_expires_days(days: int | None) -> int | None:
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int):
        raise InvalidInput("The expiry is a whole number of days.")
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise InvalidInput(f"Tokens expire after 1 to {MAX_EXPIRES_DAYS} days.")
    return days


class ApiTokenStore:
    def __init__(self, sessions: async_sessionmaker) -> None:
        self._sessions = sessions

    async def user_id(self, name: str) -> str:
        """The id of the user named `name` (for the CLI, which is given names)."""
        async with self._sessions() as session:
            found = await session.scalar(select(User.id).where(User.identifier == name))
        if found is None:
            raise NotFound(f"No user named {name!r}.")
        return found

    async def add(
        self, user_id: str, name: str, expires_days: int | None = None
    ) -> tuple[ApiTokenRecord, str]:
        """A new token for the user: its record and the token itself (shown only now)."""
        name = check_token_name(name)
        days = check_expires_days(expires_days)
        plaintext = new_token()
        now = utcnow()
        row = ApiToken(
            user_id=user_id,
            name=name,
            prefix=plaintext[:VISIBLE_CHARS],
            token_hash=hash_token(plaintext),
            created_at=now,
            expires_at=now + timedelta(days=days) if days else None,
        )
        async with write_session(self._sessions) as session:
            active = await session.scalar(
                select(func.count())
                .select_from(ApiToken)
                .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
                .where((ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now))
            )
            if (active or 0) >= MAX_ACTIVE_PER_USER:
                raise InvalidInput(
                    f"You have {MAX_ACTIVE_PER_USER} active API tokens, the most allowed; "
                    "revoke one you no longer use first."
                )
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:  # the user was removed meanwhile
                raise NotFound("No such user.") from None
        return _record(row), plaintext

    async def list(self, user_id: str) -> list[ApiTokenRecord]:
        """The user's tokens, newest first, revoked and expired ones included."""
        async with self._sessions() as session:
            rows = await session.scalars(
                select(ApiToken)
                .where(ApiToken.user_id == user_id)
                .order_by(ApiToken.created_at.desc(), ApiToken.id)
            )
            return [_record(row) for row in rows]

    async def get(self, token_id: str, user_id: str | None = None) -> ApiTokenRecord:
        """One token; NotFound if missing or (with `user_id`) someone else's."""
        row = await self._find(token_id, user_id)
        return _record(row)

    async def _find(self, token_id: str, user_id: str | None) -> ApiToken:
        if not is_uuid(token_id or ""):
            raise NotFound(_NO_SUCH_TOKEN)
        query = select(ApiToken).where(ApiToken.id == token_id)
        if user_id is not None:
            query = query.where(ApiToken.user_id == user_id)
        async with self._sessions() as session:
            row = await session.scalar(query)
        if row is None:
            raise NotFound(_NO_SUCH_TOKEN)
        return row

    async def revoke(self, token_id: str, user_id: str | None = None) -> ApiTokenRecord:
        """Revoke a token at once; `user_id` None is the operator (any user's token).

        Revoking a revoked token changes nothing and answers its record again.
        """
        if not is_uuid(token_id or ""):
            raise NotFound(_NO_SUCH_TOKEN)
        query = update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        if user_id is not None:
            query = query.where(ApiToken.user_id == user_id)
        async with write_session(self._sessions) as session:
            await session.execute(query.values(revoked_at=utcnow()))
        return await self.get(token_id, user_id)

    async def authenticate(self, plaintext: str) -> ApiCaller | None:
        """Who the token acts for, if it is well formed, known, active and its user exists.

        One indexed lookup joined to the user, on every request: nothing is cached, so
        a revocation or a removed user takes effect at the next request.
        """
        if not plaintext or not _TOKEN.match(plaintext):
            return None
        now = utcnow()
        async with self._sessions() as session:
            found = (
                await session.execute(
                    select(ApiToken, User.identifier)
                    .join(User, User.id == ApiToken.user_id)
                    .where(ApiToken.token_hash == hash_token(plaintext))
                    .where(ApiToken.revoked_at.is_(None))
                )
            ).first()
        if found is None:
            return None
        row, identifier = found
        expires_at = _aware(row.expires_at)
        if expires_at is not None and expires_at <= now:
            return None
        last_used = _aware(row.last_used_at)
        if last_used is None or now - last_used >= LAST_USED_EVERY:
            await self._touch(row.id, now)
        return ApiCaller(
            user_id=row.user_id, user_name=identifier, token_id=row.id, token_name=row.name
        )

    async def _touch(self, token_id: str, now: datetime) -> None:
        async with write_session(self._sessions) as session:
            await session.execute(
                update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now)
            )
