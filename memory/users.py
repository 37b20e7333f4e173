"""Accounts: names and argon2 password hashes.

argon2-cffi is used because it is the maintained reference binding of the password
hashing competition winner; hashes carry their own parameters, so they can be
strengthened later without a migration (`needs_rehash`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from memory.errors import InvalidInput, NotFound
from memory.models import User

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
_hasher = PasswordHasher()
# Verifying against this keeps the time for unknown names equal to that for known ones.
_DUMMY_HASH = _hasher.hash("timing-equaliser-not-a-password")


@dataclass(frozen=True)
class Account:
    id: str
    identifier: str
    role: str


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidInput(
            "User names are 1-64 characters: letters, digits, and . _ @ - "
            "(starting with a letter or digit)."
        )
    return name


def check_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise InvalidInput(f"Passwords need at least {MIN_PASSWORD} characters.")
    if len(password) > 1024:
        raise InvalidInput("Passwords can be at most 1024 characters.")
    return password


class UserStore:
    def __init__(self, sessions: async_sessionmaker) -> None:
        self._sessions = sessions

    async def add(self, name: str, password: str, role: str = "user") -> Account:
        check_name(name)
        check_password(password)
        user = User(identifier=name, password_hash=_hasher.hash(password), role=role, meta={})
        async with self._sessions() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise InvalidInput(f"A user named {name!r} already exists.") from None
        return Account(user.id, user.identifier, user.role)

    async def set_password(self, name: str, password: str) -> None:
        check_password(password)
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.identifier == name))
            if user is None:
                raise NotFound(f"No user named {name!r}.")
            user.password_hash = _hasher.hash(password)
            await session.commit()

    async def remove(self, name: str) -> None:
        async with self._sessions() as session:
            result = await session.execute(delete(User).where(User.identifier == name))
            await session.commit()
        if result.rowcount == 0:
            raise NotFound(f"No user named {name!r}.")

    async def list(self) -> list[Account]:
        async with self._sessions() as session:
            rows = await session.scalars(select(User).order_by(User.identifier))
            return [Account(u.id, u.identifier, u.role) for u in rows]

    async def count(self) -> int:
        async with self._sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(User)) or 0)

    async def verify(self, name: str, password: str) -> Account | None:
        """The account if the password matches; None otherwise (never says which part failed)."""
        async with self._sessions() as session:
            user = await session.scalar(select(User).where(User.identifier == name))
        stored = user.password_hash if user and user.password_hash else _DUMMY_HASH
        try:
            _hasher.verify(stored, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if user is None or not user.password_hash:
            return None
        return Account(user.id, user.identifier, user.role)
