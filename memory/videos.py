"""Lineage of clips: source image, backend, model, length, seed, cost, and the files.

Like images, every read is scoped to a user, so a video id that a model or user makes up
(or copies from someone else's thread) is simply not found; the reads and the recording are
the images' own (memory/thread_media.py), so the two cannot drift apart. The MP4 and its
poster are claimed for the thread in `media_refs`, which is what the media route checks
before it serves either file (by login cookie or by signed link), live and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from memory.ids import require_uuid
from memory.models import Video, new_id, utcnow
from memory.thread_media import LineageRecord, MediaLineageStore


@dataclass(frozen=True, kw_only=True)
class VideoRecord(LineageRecord):
    source_image_id: str | None
    poster_key: str
    prompt_sent: str | None
    frames: int
    fps: float
    seconds: float


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


class VideoStore(MediaLineageStore[Video, VideoRecord]):
    row_type = Video
    record_type = VideoRecord
    noun = "video"

    async def record(self, thread_id: str, user_id: str, new: NewVideo) -> VideoRecord:
        """Store the clip and its poster, then the lineage row and both files' claims.

        The files are written first (content-addressed, so a retry costs nothing); the
        row and claims are one transaction, so a clip is either fully recorded or not.
        """
        thread_id = require_uuid(thread_id, "thread id")
        video_id = new_id()
        created = utcnow()
        key = await self._put(new.data)
        poster_key = await self._put(new.poster)
        return await self._add(
            new,
            row_id=video_id,
            thread_id=thread_id,
            user_id=user_id,
            created=created,
            files=[(key, new.mime, len(new.data)), (poster_key, "image/png", len(new.poster))],
            source_image_id=new.source_image_id,
            poster_key=poster_key,
            frames=new.frames,
            fps=new.fps,
            seconds=new.seconds,
        )
