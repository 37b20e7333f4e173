"""Lineage of images: what was asked, what was sent, by which backend, and the file.

Every read is scoped to a user, so an image id that a model or user makes up (or copies
from someone else's thread) is simply not found. The reads and the recording are shared
with clips (memory/thread_media.py), so the two kinds cannot drift apart in who may see
what; here is only what an image has of its own: its parent, its parameters embedded in
the PNG (so a downloaded file still says how it was made), and the media route's checks.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update

from memory.db import write_session
from memory.ids import require_uuid
from memory.image_facets import lora_names_of, style_of
from memory.models import Image, MediaRef, Thread, new_id, utcnow
from memory.png_metadata import embed
from memory.thread_media import LineageRecord, MediaLineageStore


@dataclass(frozen=True, kw_only=True)
class ImageRecord(LineageRecord):
    parent_id: str | None
    prompt_sent: str
    kept_at: datetime | None = None  # when its owner kept (starred) it
    batch_id: str | None = None  # the batch it was made in (memory/batches.py)


@dataclass(frozen=True)
class NewImage:
    data: bytes
    mime: str
    width: int
    height: int
    prompt_typed: str
    prompt_sent: str
    backend: str
    model: str
    parameters: dict[str, Any]
    seed: int | None = None
    parent_id: str | None = None
    message_id: str | None = None
    cost_usd: Decimal | None = None
    duration_ms: int | None = None
    batch_id: str | None = None  # made as an item of this batch


class ImageStore(MediaLineageStore[Image, ImageRecord]):
    row_type = Image
    record_type = ImageRecord
    noun = "image"
    # Told of each image once it is recorded, with its owner's id (the runtime sets it to
    # queue the image for its likeness embedding). Called in the event loop: must return
    # at once and not raise.
    on_recorded: Callable[[ImageRecord, str], None] | None = None

    async def record(
        self, thread_id: str, user_id: str, new: NewImage
    ) -> tuple[ImageRecord, bytes]:
        """Store the file (with its parameters embedded) and its lineage row.

        Returns the record and the bytes as stored, so the chat shows exactly the file
        that a later download returns.
        """
        thread_id = require_uuid(thread_id, "thread id")
        image_id = new_id()
        created = utcnow()
        data = new.data
        if new.mime == "image/png":
            data = await asyncio.to_thread(
                embed,
                new.data,
                {
                    "image_id": image_id,
                    "prompt_typed": new.prompt_typed,
                    "prompt_sent": new.prompt_sent,
                    "backend": new.backend,
                    "model": new.model,
                    "parameters": new.parameters,
                    "seed": new.seed,
                    "width": new.width,
                    "height": new.height,
                    "parent_id": new.parent_id,
                    # A decimal string, as in the JSON parameters: a float cannot hold it.
                    "cost_usd": None if new.cost_usd is None else str(new.cost_usd),
                    "created_at": created.isoformat(),
                },
            )
        key = await self._put(data)
        record = await self._add(
            new,
            row_id=image_id,
            thread_id=thread_id,
            user_id=user_id,
            created=created,
            files=[(key, new.mime, len(data))],
            parent_id=new.parent_id,
            style=style_of(new.parameters),  # the gallery's filter columns
            lora_names=lora_names_of(new.parameters),
            batch_id=require_uuid(new.batch_id, "batch id") if new.batch_id else None,
        )
        if self.on_recorded is not None:
            self.on_recorded(record, user_id)
        return record, data

    async def keep(self, image_id: str, user_id: str) -> ImageRecord:
        """Star the user's image (once: keeping it again keeps the first time)."""
        record = await self.get(image_id, user_id)  # anyone else's is not found
        if record.kept_at is None:
            async with write_session(self._sessions) as session:
                await session.execute(
                    update(Image)
                    .where(Image.id == record.id, Image.user_id == user_id, Image.kept_at.is_(None))
                    .values(kept_at=utcnow())
                )
            record = await self.get(image_id, user_id)
        return record

    async def ids_starting_with(self, user_id: str, prefix: str, limit: int = 2) -> list[str]:
        """The user's image ids (any conversation) that start with a short id from a caption."""
        prefix = prefix.lower()
        if not re.fullmatch(r"[0-9a-f-]{4,36}", prefix):
            return []  # not the start of an id (and no LIKE wildcard gets through)
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Image.id)
                .where(Image.user_id == user_id, Image.id.like(f"{prefix}%"))
                .limit(limit)
            )
            return list(rows.all())

    async def media_owner_ok(self, key: str, user_id: str) -> str | None:
        """The file's mime type if `user_id` owns a thread that references it."""
        async with self._reads.connect() as conn:
            return await conn.scalar(_owned_mime_query(), {"key": key, "user_id": user_id})

    async def media_mime(self, key: str) -> str | None:
        async with self._reads.connect() as conn:
            return await conn.scalar(_mime_query(), {"key": key})


# Asked for every image a browser loads, so built once (building them per call cost
# more than running them).


@functools.cache
def _owned_mime_query() -> Any:
    """The file's mime type if a thread of the user's references it."""
    return (
        select(MediaRef.mime)
        .join(Thread, Thread.id == MediaRef.thread_id)
        .where(MediaRef.media_key == bindparam("key"), Thread.user_id == bindparam("user_id"))
        .limit(1)
    )


@functools.cache
def _mime_query() -> Any:
    return select(MediaRef.mime).where(MediaRef.media_key == bindparam("key")).limit(1)
