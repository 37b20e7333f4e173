"""What image and video lineage share: a row in a thread, its files claimed, owner-only reads.

Each store writes its files to the media store itself (an image gets metadata embedded
first, a clip has a poster too); then `add_to_thread` records the row and claims the files
in one transaction. Reads go through `get_owned` and `newest_in_thread`, which see only
the user's own rows, so an id copied from someone else's thread is simply not found.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.errors import NotFound
from memory import media_claims
from memory.ids import require_uuid
from memory.models import Image, Thread, Video

Row = TypeVar("Row", Image, Video)


async def add_to_thread(
    sessions: async_sessionmaker[AsyncSession],
    insert: Callable[..., Any],
    row: Image | Video,
    files: Sequence[tuple[str, str, int]],
) -> None:
    """Add `row` and claim each `(media_key, mime, size_bytes)` file for the row's thread.

    One transaction: the thread is created (owned by the row's user, at the row's time)
    if it is new, and someone else's thread is not found, so a row is either fully
    recorded (with its claims) or not at all.
    """
    thread_id, user_id, created = row.thread_id, row.user_id, row.created_at
    async with sessions() as session, session.begin():
        await session.execute(
            insert(Thread)
            .values(id=thread_id, user_id=user_id, created_at=created, updated_at=created)
            .on_conflict_do_nothing(index_elements=["id"])
        )
        owner = await session.scalar(select(Thread.user_id).where(Thread.id == thread_id))
        if owner not in (None, user_id):
            raise NotFound("No such conversation.")
        session.add(row)
        for media_key, mime, size_bytes in files:
            await media_claims.claim(
                session,
                insert,
                media_key=media_key,
                thread_id=thread_id,
                user_id=user_id,
                mime=mime,
                size_bytes=size_bytes,
            )


async def get_owned(
    sessions: async_sessionmaker[AsyncSession],
    model: type[Row],
    row_id: str,
    user_id: str,
    noun: str,
) -> Row:
    """The user's row with this id; anyone else's, or none, is not found.

    `noun` names the kind in the errors ("image" gives "No image with id …").
    """
    row_id = require_uuid(row_id, f"{noun} id")
    async with sessions() as session:
        row = await session.scalar(
            select(model).where(model.id == row_id, model.user_id == user_id)
        )
    if row is None:
        raise NotFound(f"No {noun} with id {row_id} in your conversations.")
    return row


async def newest_in_thread(
    sessions: async_sessionmaker[AsyncSession],
    model: type[Row],
    thread_id: str,
    user_id: str,
    limit: int,
) -> list[Row]:
    """The user's rows in the thread, oldest first (the newest `limit` of them)."""
    thread_id = require_uuid(thread_id, "thread id")
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(model)
                .where(model.thread_id == thread_id, model.user_id == user_id)
                .order_by(model.created_at.desc())
                .limit(limit)
            )
        ).all()
    return list(reversed(rows))
