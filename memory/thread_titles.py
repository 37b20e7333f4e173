"""A conversation's name, read and replaced only while it is still the one expected.

Chainlit names a new conversation after its first message as typed; the chat replaces
that with a title (chat_app/titles.py) a moment later, in the background. By then the
user may have renamed it: the replacement is a compare-and-set on the name, so a name
the user chose is never overwritten, and it only touches the user's own conversation.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from memory.db import write_transaction
from memory.ids import require_uuid
from memory.models import Thread

MAX_NAME = 255  # the column's width


async def name_of(engine: AsyncEngine, thread_id: str, user_id: str) -> str | None:
    """The conversation's name; None if it has none yet or is not this user's."""
    async with engine.connect() as conn:
        return await conn.scalar(
            select(Thread.name).where(
                Thread.id == require_uuid(thread_id, "thread id"),
                Thread.user_id == require_uuid(user_id, "user id"),
            )
        )


async def rename_if_unchanged(
    engine: AsyncEngine, thread_id: str, user_id: str, *, expected: str, name: str
) -> bool:
    """Set the name to `name` if it is still `expected`; True if it was set.

    The activity time is left alone: a title is not activity, and must not move the
    conversation in the sidebar.
    """
    async with write_transaction(engine) as conn:
        result = await conn.execute(
            update(Thread)
            .where(
                Thread.id == require_uuid(thread_id, "thread id"),
                Thread.user_id == require_uuid(user_id, "user id"),
                Thread.name == expected[:MAX_NAME],
            )
            .values(name=name[:MAX_NAME])
        )
    return result.rowcount == 1
