"""Accounts: names and argon2 password hashes.

argon2-cffi is used because it is the maintained reference binding of the password
hashing competition winner; hashes carry their own parameters, so they can be
strengthened later without a migration (`needs_rehash`).

Hashing takes about a quarter of a second of CPU by design, so it never runs on the
event loop (where it would stall every chat): it runs on a small pool of its own, which
also bounds how many hashes run at once however many logins arrive (argon2-cffi
releases the GIL while it works). Changing a password or removing a user ends that
user's login sessions in the same transaction (see memory/auth_sessions.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from core.errors import InvalidInput, NotFound
from memory.auth_sessions import revoke_all
from memory.db import write_session
from memory.models import AuthSession, User

T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8
_hasher = PasswordHasher()
# Threads start lazily; argon2 uses 64 MiB per hash, so a few at a time is plenty.
_HASH_POOL = ThreadPoolExecutor(
    max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="argon2"
)


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps the time for unknown names equal to that for known ones.

    Made on first use, not at import: a hash is a quarter of a second of start-up."""
    return _hasher.hash("timing-equaliser-not-a-password")


def _matches(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; None (no such user) checks a dummy hash."""
    try:
        return _hasher.verify(stored or _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return False


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
    def __init__(self, sessions: async_sessionmaker, hash_pool: Executor | None = None) -> None:
        self._sessions = sessions
        self._pool = hash_pool or _HASH_POOL

    async def _off_loop(self, func: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)

    async def add(self, name: str, password: str, role: str = "user") -> Account:
        check_name(name)
        check_password(password)
        password_hash = await self._off_loop(_hasher.hash, password)
        user = User(identifier=name, password_hash=password_hash, role=role, meta={})
        async with write_session(self._sessions) as session:
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise InvalidInput(f"A user named {name!r} already exists.") from None
        return Account(user.id, user.identifier, user.role)

    async def set_password(self, name: str, password: str) -> int:
        """Change the password and end all of the user's sessions; returns how many."""
        check_password(password)
        password_hash = await self._off_loop(_hasher.hash, password)
        async with write_session(self._sessions) as session:
            user = await session.scalar(select(User).where(User.identifier == name))
            if user is None:
                raise NotFound(f"No user named {name!r}.")
            user.password_hash = password_hash
            ended = await revoke_all(session, user.id)
        return ended

    async def remove(self, name: str) -> None:
        """Remove the user, their conversations and their sessions in one transaction."""
        async with write_session(self._sessions) as session:
            user_id = await session.scalar(select(User.id).where(User.identifier == name))
            if user_id is None:
                raise NotFound(f"No user named {name!r}.")
            # The foreign key cascades too; deleting explicitly does not depend on it.
            await session.execute(delete(AuthSession).where(AuthSession.user_id == user_id))
            await session.execute(delete(User).where(User.id == user_id))

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
        stored = user.password_hash if user and user.password_hash else None
        if not await self._off_loop(_matches, stored, password or ""):
            return None
        if user is None or not user.password_hash:
            return None
        return Account(user.id, user.identifier, user.role)
