"""What image and video lineage share: a row in a thread, its files claimed, owner-only reads.

Images and clips are recorded, owned and read the same way, and any difference between the
two in who may see what would be a hole; so that part is written once, here.
`LineageRecord` holds the fields every record has and builds itself from its row;
`MediaLineageStore` reads (`get`, `for_thread`, `read`) and records a row with its files'
claims. `ImageStore` and `VideoStore` add only what their kind needs: PNG metadata and the
media route's checks for images, a poster for clips.

Each store writes its files to the media store itself (content-addressed, so a retry costs
nothing), then `_add` records the row and claims the files in one transaction, so a row is
either fully recorded or not at all. Every read is scoped to the user, so an id made up, or
copied from someone else's thread, is simply not found.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, Self, TypeVar

from sqlalchemy import Integer, bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import NotFound
from memory import media_claims
from memory.db import for_reads, session_factory, write_session
from memory.ids import require_uuid
from memory.media_store import MediaStorage
from memory.models import Image, Video
from memory.row_columns import row_columns
from memory.thread_rows import own_thread

RowT = TypeVar("RowT", Image, Video)
RecordT = TypeVar("RecordT", bound="LineageRecord")

# What the caller says about a new file (NewImage and NewVideo both carry these), stored
# on the row as given.
_FROM_NEW = (
    "message_id",
    "mime",
    "prompt_typed",
    "prompt_sent",
    "backend",
    "model",
    "parameters",
    "seed",
    "width",
    "height",
    "cost_usd",
    "duration_ms",
)


@dataclass(frozen=True, kw_only=True)
class LineageRecord:
    """The fields every generated file's record has; each kind's record adds its own."""

    id: str
    thread_id: str
    media_key: str
    mime: str
    prompt_typed: str
    backend: str
    model: str
    parameters: dict[str, Any]
    seed: int | None
    width: int
    height: int
    cost_usd: Decimal | None  # this file's share of its request, exact
    duration_ms: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Self:
        """From an `Image` or `Video`, or a row of its `row_columns`."""
        values = {field.name: getattr(row, field.name) for field in fields(cls)}
        # A copy of its own: a frozen record must not share a mutable dict with a row.
        values["parameters"] = dict(row.parameters or {})
        return cls(**values)


class MediaLineageStore(Generic[RowT, RecordT]):
    """Owner-scoped lineage of one kind of file; a subclass names its row, record and noun."""

    row_type: type[RowT]
    record_type: type[RecordT]
    noun: str  # names the kind in errors: "image" gives "No image with id …"

    def __init__(self, engine: AsyncEngine, media: MediaStorage) -> None:
        self._engine = engine
        self._reads = for_reads(engine)
        self._sessions = session_factory(engine)
        self._media = media
        self._insert = media_claims.insert_for(engine)

    async def get(self, row_id: str, user_id: str) -> RecordT:
        """The user's record with this id; anyone else's, or none, is not found."""
        model = self.row_type
        row_id = require_uuid(row_id, f"{self.noun} id")
        async with self._sessions() as session:
            row = await session.scalar(
                select(model).where(model.id == row_id, model.user_id == user_id)
            )
        if row is None:
            raise NotFound(f"No {self.noun} with id {row_id} in your conversations.")
        return self.record_type.from_row(row)

    async def for_thread(self, thread_id: str, user_id: str, limit: int = 50) -> list[RecordT]:
        """The user's records in the thread, oldest first (the newest `limit` of them)."""
        thread_id = require_uuid(thread_id, "thread id")
        params = {"thread_id": thread_id, "user_id": user_id, "limit": limit}
        async with self._reads.connect() as conn:  # read on every agent turn: no ORM
            rows = (await conn.execute(_newest_in_thread(self.row_type), params)).all()
        return [self.record_type.from_row(row) for row in reversed(rows)]

    def read(self, record: RecordT) -> bytes:
        """The stored file (the image, the MP4) of a record the caller already fetched."""
        return self._media.get(record.media_key)

    async def _put(self, data: bytes) -> str:
        return await asyncio.to_thread(self._media.put, data)

    async def _add(
        self,
        new: Any,
        *,
        row_id: str,
        thread_id: str,
        user_id: str,
        created: datetime,
        files: Sequence[tuple[str, str, int]],
        **own: Any,
    ) -> RecordT:
        """Record `new`'s row and claim each `(media_key, mime, size_bytes)` file for its thread.

        The row takes the fields of `_FROM_NEW` from `new`, the kind's `own` columns, and
        the first file as its `media_key`. One transaction: the thread is created (owned by
        the user, at the row's time) if it is new, and someone else's thread is not found.
        """
        row = self.row_type(
            id=row_id,
            thread_id=thread_id,
            user_id=user_id,
            media_key=files[0][0],
            created_at=created,
            **{name: getattr(new, name) for name in _FROM_NEW},
            **own,
        )
        async with write_session(self._sessions) as session:
            connection = await session.connection()  # Core: no ORM work per statement
            await own_thread(
                connection, self._insert, thread_id=thread_id, user_id=user_id, at=created
            )
            session.add(row)
            for media_key, mime, size_bytes in files:
                await media_claims.claim(
                    session,
                    self._insert,
                    media_key=media_key,
                    thread_id=thread_id,
                    user_id=user_id,
                    mime=mime,
                    size_bytes=size_bytes,
                )
        return self.record_type.from_row(row)


# Read on every agent turn, so built once per table (functools.cache) with bound
# parameters: building it per call, then its cache key, cost more than running it.


@functools.cache
def _newest_in_thread(model: Any) -> Any:
    return (
        select(*row_columns(model))
        .where(model.thread_id == bindparam("thread_id"), model.user_id == bindparam("user_id"))
        .order_by(model.created_at.desc())
        .limit(bindparam("limit", type_=Integer))
    )
