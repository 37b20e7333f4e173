"""Lineage of clips: source image, backend, model, length, seed, cost, and the files.

Like images, every read is scoped to a user, so a video id that a model or user makes up
(or copies from someone else's thread) is simply not found. The MP4 and its poster are
claimed for the thread in `media_refs`, which is what the media route checks before it
serves either file (by login cookie or by signed link), live and after a resume.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from memory import media_claims, thread_media
from memory.db import session_factory
from memory.ids import require_uuid
from memory.media_store import MediaStore
from memory.models import Video, new_id, utcnow


@dataclass(frozen=True)
class VideoRecord:
    id: str
    thread_id: str
    source_image_id: str | None
    media_key: str
    poster_key: str
    mime: str
    prompt_typed: str
    prompt_sent: str | None
    backend: str
    model: str
    parameters: dict[str, Any]
    seed: int | None
    width: int
    height: int
    frames: int
    fps: float
    seconds: float
    cost_usd: Decimal | None
    duration_ms: int | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: Video) -> VideoRecord:
        return cls(
            id=row.id,
            thread_id=row.thread_id,
            source_image_id=row.source_image_id,
            media_key=row.media_key,
            poster_key=row.poster_key,
            mime=row.mime,
            prompt_typed=row.prompt_typed,
            prompt_sent=row.prompt_sent,
            backend=row.backend,
            model=row.model,
            parameters=dict(row.parameters or {}),
            seed=row.seed,
            width=row.width,
            height=row.height,
            frames=row.frames,
            fps=row.fps,
            seconds=row.seconds,
            cost_usd=row.cost_usd,
            duration_ms=row.duration_ms,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class NewVideo:
    data: bytes
    poster: bytes
    width: int
    height: int
    frames: int
    fps: float
    seconds: float
    prompt_typed: str
    prompt_sent: str | None
    backend: str
    model: str
    parameters: dict[str, Any]
    mime: str = "video/mp4"
    seed: int | None = None
    source_image_id: str | None = None
    message_id: str | None = None
    cost_usd: Decimal | None = None
    duration_ms: int | None = None


class VideoStore:
    def __init__(self, engine: AsyncEngine, media: MediaStore) -> None:
        self._sessions = session_factory(engine)
        self._media = media
        self._insert = media_claims.insert_for(engine)

    async def record(self, thread_id: str, user_id: str, new: NewVideo) -> VideoRecord:
        """Store the clip and its poster, then the lineage row and both files' claims.

        The files are written first (content-addressed, so a retry costs nothing); the
        row and claims are one transaction, so a clip is either fully recorded or not.
        """
        thread_id = require_uuid(thread_id, "thread id")
        video_id = new_id()
        created = utcnow()
        key = await asyncio.to_thread(self._media.put, new.data)
        poster_key = await asyncio.to_thread(self._media.put, new.poster)
        row = Video(
            id=video_id,
            thread_id=thread_id,
            user_id=user_id,
            message_id=new.message_id,
            source_image_id=new.source_image_id,
            media_key=key,
            poster_key=poster_key,
            mime=new.mime,
            prompt_typed=new.prompt_typed,
            prompt_sent=new.prompt_sent,
            backend=new.backend,
            model=new.model,
            parameters=new.parameters,
            seed=new.seed,
            width=new.width,
            height=new.height,
            frames=new.frames,
            fps=new.fps,
            seconds=new.seconds,
            cost_usd=new.cost_usd,
            duration_ms=new.duration_ms,
            created_at=created,
        )
        await thread_media.add_to_thread(
            self._sessions,
            self._insert,
            row,
            [(key, new.mime, len(new.data)), (poster_key, "image/png", len(new.poster))],
        )
        return VideoRecord.from_row(row)

    async def get(self, video_id: str, user_id: str) -> VideoRecord:
        row = await thread_media.get_owned(self._sessions, Video, video_id, user_id, "video")
        return VideoRecord.from_row(row)

    async def for_thread(self, thread_id: str, user_id: str, limit: int = 50) -> list[VideoRecord]:
        """The thread's clips, oldest first (the newest `limit` of them)."""
        rows = await thread_media.newest_in_thread(self._sessions, Video, thread_id, user_id, limit)
        return [VideoRecord.from_row(r) for r in rows]

    def read(self, record: VideoRecord) -> bytes:
        """The stored MP4 of a clip the caller already fetched (and so may see)."""
        return self._media.get(record.media_key)
