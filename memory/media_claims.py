"""Recording that a thread may read a stored file (the media route checks this)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from memory.models import MediaRef


def insert_for(engine: AsyncEngine) -> Callable[..., Any]:
    """The dialect's INSERT, which has ON CONFLICT on both SQLite and PostgreSQL.

    Only the engine's own dialect is imported: PostgreSQL's costs a SQLite start ~30 ms.
    """
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


async def claim(
    session: AsyncSession,
    insert: Callable[..., Any],
    *,
    media_key: str,
    thread_id: str,
    user_id: str | None,
    mime: str,
    size_bytes: int,
) -> None:
    """Idempotent: the same file claimed twice by one thread is one row."""
    params = {
        "media_key": media_key,
        "thread_id": thread_id,
        "user_id": user_id,
        "mime": mime[:128],
        "size_bytes": size_bytes,
    }
    connection = await session.connection()  # Core: no ORM work per statement
    await connection.execute(_claim_query(insert), params)


@functools.cache
def _claim_query(insert: Callable[..., Any]) -> Any:
    """Built once per dialect: building it per image cost more than running it."""
    return insert(MediaRef).on_conflict_do_nothing(index_elements=["media_key", "thread_id"])
