"""The conversation row that a user's own writes (an image, a video, a batch) create if
it is new, and the owner check every such write and every ledger reservation makes.

Statements built once (functools.cache) with bound parameters: they run for every image
stored and every reservation, and building them per call, then their cache keys, cost
more than running them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from core.errors import NotFound
from memory.models import Thread


async def own_thread(
    conn: AsyncConnection,
    insert: Callable[..., Any],
    *,
    thread_id: str,
    user_id: str,
    at: datetime,
) -> None:
    """Create the thread (the user's, made and active at `at`) unless it exists; someone
    else's is not found. `insert` is the dialect's (memory.media_claims.insert_for)."""
    await conn.execute(_create_if_absent(insert), {"id": thread_id, "user_id": user_id, "at": at})
    owner = await conn.scalar(owner_query(), {"thread_id": thread_id})
    if owner not in (None, user_id):
        raise NotFound("No such conversation.")


@functools.cache
def owner_query() -> Any:
    """The owner of the thread `thread_id` (no row if there is no such thread)."""
    return select(Thread.user_id).where(Thread.id == bindparam("thread_id"))


@functools.cache
def _create_if_absent(insert: Callable[..., Any]) -> Any:
    return (
        insert(Thread)
        .values(created_at=bindparam("at"), updated_at=bindparam("at"))
        .on_conflict_do_nothing(index_elements=["id"])
    )
