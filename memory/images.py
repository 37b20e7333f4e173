"""Lineage of images: what was asked, what was sent, by which backend, and the file.

Every read is scoped to a user, so an image id that a model or user makes up (or copies
from someone else's thread) is simply not found.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from memory import media_claims, thread_media
from memory.db import session_factory
from memory.ids import require_uuid
from memory.media_store import MediaStore
from memory.models import Image, MediaRef, Thread, new_id, utcnow
from memory.png_metadata import embed


@dataclass(frozen=True)
class ImageRecord:
    id: str
    thread_id: str
    parent_id: str | None
    media_key: str
    mime: str
    prompt_typed: str
    prompt_sent: str
    backend: str
    model: str
    parameters: dict[str, Any]
    seed: int | None
    width: int
    height: int
    cost_usd: Decimal | None  # this image's share of its request, exact
    duration_ms: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Image) -> ImageRecord:
        return cls(
            id=row.id,
            thread_id=row.thread_id,
            parent_id=row.parent_id,
            media_key=row.media_key,
            mime=row.mime,
            prompt_typed=row.prompt_typed,
            prompt_sent=row.prompt_sent,
            backend=row.backend,
            model=row.model,
            parameters=dict(row.parameters or {}),
            seed=row.seed,
            width=row.width,
            height=row.height,
            cost_usd=row.cost_usd,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
        )


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


class ImageStore:
    def __init__(self, engine: AsyncEngine, media: MediaStore) -> None:
        self._sessions = session_factory(engine)
        self._media = media
        self._insert = media_claims.insert_for(engine)

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
        key = await asyncio.to_thread(self._media.put, data)
        row = Image(
            id=image_id,
            thread_id=thread_id,
            user_id=user_id,
            message_id=new.message_id,
            parent_id=new.parent_id,
            media_key=key,
            mime=new.mime,
            prompt_typed=new.prompt_typed,
            prompt_sent=new.prompt_sent,
            backend=new.backend,
            model=new.model,
            parameters=new.parameters,
            seed=new.seed,
            width=new.width,
            height=new.height,
            cost_usd=new.cost_usd,
            duration_ms=new.duration_ms,
            created_at=created,
        )
        await thread_media.add_to_thread(
            self._sessions, self._insert, row, [(key, new.mime, len(data))]
        )
        return ImageRecord.from_row(row), data

    async def get(self, image_id: str, user_id: str) -> ImageRecord:
        row = await thread_media.get_owned(self._sessions, Image, image_id, user_id, "image")
        return ImageRecord.from_row(row)

    def read(self, record: ImageRecord) -> bytes:
        """The stored file of an image the caller already fetched (and so may see)."""
        return self._media.get(record.media_key)

    async def for_thread(self, thread_id: str, user_id: str, limit: int = 50) -> list[ImageRecord]:
        """The thread's images, oldest first (the newest `limit` of them)."""
        rows = await thread_media.newest_in_thread(self._sessions, Image, thread_id, user_id, limit)
        return [ImageRecord.from_row(r) for r in rows]

    async def media_owner_ok(self, key: str, user_id: str) -> str | None:
        """The file's mime type if `user_id` owns a thread that references it."""
        async with self._sessions() as session:
            return await session.scalar(
                select(MediaRef.mime)
                .join(Thread, Thread.id == MediaRef.thread_id)
                .where(MediaRef.media_key == key, Thread.user_id == user_id)
                .limit(1)
            )

    async def media_mime(self, key: str) -> str | None:
        async with self._sessions() as session:
            return await session.scalar(
                select(MediaRef.mime).where(MediaRef.media_key == key).limit(1)
            )
