"""WebP thumbnails of stored images, made once per media key and kept on disk.

The gallery shows hundreds of images at a time; sending the full PNGs would cost
megabytes per screen and a decode each in the browser. A thumbnail is a pure function of
the source key and the settings below, so it is made on first request, written to the
store's local cache folder (`<data dir>/media/thumbs/ab/<key>-<size>.webp`, atomically;
also when the originals are in S3: a thumbnail can always be made again) and then only
read. Concurrent first requests for one key share one generation (single flight), and
decoding runs in a worker thread so the event loop never waits on Pillow.

Clips have no thumbnail of their own: callers pass the clip's poster key.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import NotFound, PersistenceError
from core.logging_setup import get_logger
from memory.ids import require_media_key
from memory.media_store import MediaStorage
from memory.models import MediaRef, Thread, User, Video

log = get_logger(__name__)

SIZE = 384  # longest side, px: a sharp grid cell on a 2x screen
QUALITY = 80
# Recently served thumbnails kept in memory (bytes, least recently used dropped first):
# a warm request then costs no disk read and no thread hop. ~15 KB each: ~2,000 here.
CACHE_BYTES = 32 * 1024 * 1024
# Part of the file name and the ETag: bump it when the output for a key changes.
VERSION = 1


class Thumbnails:
    def __init__(
        self,
        media: MediaStorage,
        size: int = SIZE,
        quality: int = QUALITY,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.media = media
        self.root = media.cache_dir / "thumbs"
        self.size = size
        self.quality = quality
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0

    def path_for(self, key: str) -> Path:
        key = require_media_key(key)
        return self.root / key[:2] / f"{key}-{self.size}.webp"

    def etag(self, key: str) -> str:
        """A strong ETag known without touching the disk: the thumbnail of a key never
        changes unless the size, quality or VERSION does."""
        return f'"{key}-{self.size}-{self.quality}-v{VERSION}"'

    async def ensure(self, key: str) -> Path:
        """The thumbnail's path, made first if needed; NotFound if the source is gone or
        is not an image Pillow can read."""
        path = self.path_for(key)
        if await asyncio.to_thread(path.is_file):
            return path
        task = self._pending.get(key)
        if task is None:  # no await between the lookup and the insert: one task per key
            task = asyncio.create_task(asyncio.to_thread(self._make, key, path))
            self._pending[key] = task
            task.add_done_callback(lambda _: self._pending.pop(key, None))
        # Shielded: a client that goes away does not cancel the others' generation.
        await asyncio.shield(task)
        return path

    async def read(self, key: str) -> bytes:
        """The thumbnail's bytes (made first if needed), from memory when recently read."""
        data = self._cache.get(key)
        if data is not None:
            self._cache.move_to_end(key)
            return data
        path = await self.ensure(key)
        data = await asyncio.to_thread(path.read_bytes)
        self._remember(key, data)
        return data

    def discard(self, key: str) -> None:
        """Remove a key's thumbnail (its source was deleted)."""
        self._forget(key)
        self.path_for(key).unlink(missing_ok=True)

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self._cache_bytes or key in self._cache:
            return
        self._cache[key] = data
        self._cached += len(data)
        while self._cached > self._cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    def _forget(self, key: str) -> None:
        dropped = self._cache.pop(key, None)
        if dropped is not None:
            self._cached -= len(dropped)

    def _make(self, key: str, path: Path) -> None:
        if path.is_file():  # made by another process, or just before this task began
            return
        data = _webp(self.media.get(key), self.size, self.quality)
        _write_atomically(path, data)
        log.info("thumbnail_made", key=key[:12], bytes=len(data))


def _webp(source: bytes, size: int, quality: int) -> bytes:
    from io import BytesIO

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(BytesIO(source)) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            image = ImageOps.exif_transpose(image)
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            if image.mode not in ("RGB", "RGBA"):
                has_alpha = image.mode in ("LA", "PA") or "transparency" in image.info
                image = image.convert("RGBA" if has_alpha else "RGB")
            out = BytesIO()
            image.save(out, "WEBP", quality=quality, method=4)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        log.warning("thumbnail_unreadable", error=type(exc).__name__)
        raise NotFound("This file has no thumbnail.") from None
    return out.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise PersistenceError(f"Could not save a thumbnail: {exc.strerror}.") from exc


async def thumbnail_source(engine: AsyncEngine, identifier: str, key: str) -> str | None:
    """The key to make `key`'s thumbnail from, if the user named `identifier` may see it:
    the key itself for an image, its poster for one of their clips; else None.

    One query for an image (the request's user and the owner check together), so a warm
    thumbnail request costs one indexed lookup: the owner check of /media, made from the
    login's identifier rather than after a separate user lookup.
    """
    async with engine.connect() as conn:
        mime = (
            await conn.execute(
                select(MediaRef.mime)
                .join(Thread, Thread.id == MediaRef.thread_id)
                .join(User, User.id == Thread.user_id)
                .where(MediaRef.media_key == key, User.identifier == identifier)
                .limit(1)
            )
        ).scalar()
        if mime is None:
            return None
        if mime.startswith("image/"):
            return key
        if not mime.startswith("video/"):
            return None
        return (
            await conn.execute(
                select(Video.poster_key)
                .join(User, User.id == Video.user_id)
                .where(Video.media_key == key, User.identifier == identifier)
                .limit(1)
            )
        ).scalar()
