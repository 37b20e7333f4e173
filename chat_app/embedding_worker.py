"""Embed each stored image for likeness search, in the background, never in a turn's way.

`ImageStore.record` tells the worker of each new image (its `on_recorded` hook); the hook
only puts the id on a queue. One asyncio task takes queued images a few at a time, reads
their files and runs CLIP's vision tower in a thread of its own (so model work never holds
the event loop, nor the default thread pool that turns use), then stores the vectors.
A failure (a file gone, a model that will not load) is logged and the images are left
without a vector: the next `atelier gallery backfill` (or a "more like this" on one of
them) embeds them. Nothing here can fail a turn.

Images recorded while the queue is full, or while the app is down, are left to the
backfill too; the queue holds ids only, so its bound is about bursts, not memory.

With a broker configured (ATELIER_BROKER_URL) the forward passes are `embedding` jobs
on `atelier worker` processes (`Likeness.remote`); this task then only reads files,
waits for the vectors and stores them, and the app needs no torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from core.errors import AtelierError
from core.logging_setup import get_logger
from memory.image_embeddings import EmbeddingIndex, ImageSource
from memory.images import ImageRecord
from memory.media_store import MediaStorage
from pipelines.scoring import clip_embeddings, clip_jobs
from pipelines.scoring.likeness import Likeness

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from chat_app.settings import Settings

log = get_logger(__name__)

BATCH_SIZE = 8  # images per forward pass: small, so a late image waits for little
# After the model fails to load, images are left to the backfill for this long before
# loading is tried again: a model that cannot load (offline, a wrong id) would otherwise
# cost a load attempt per image stored.
MODEL_RETRY_S = 600.0
QUEUE_SIZE = 10_000
_NO_LIMIT = 2**31 - 1
T = TypeVar("T")


class EmbeddingWorker:
    """Embeds queued images in small batches on its own thread; `start`/`stop` with the app."""

    def __init__(
        self, likeness: Likeness, batch_size: int = BATCH_SIZE, queue_size: int = QUEUE_SIZE
    ) -> None:
        self.likeness = likeness
        self.batch_size = batch_size
        self._queue: asyncio.Queue[ImageSource] = asyncio.Queue(queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._model_retry_at = 0.0  # monotonic time before which the model is not tried

    def enqueue(self, record: ImageRecord, user_id: str) -> None:
        """The ImageStore hook: queue a new image; returns at once, never raises."""
        try:
            self._queue.put_nowait(ImageSource(record.id, user_id, record.media_key))
        except asyncio.QueueFull:
            log.warning("embedding_queue_full", image_id=record.id)

    def start(self) -> None:
        if self._task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="embeddings")
            self._task = asyncio.create_task(self._run(), name="embeddings")

    async def stop(self) -> None:
        """Stop at once; what is still queued is left to the backfill."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if not self._queue.empty():
            log.info("embeddings_left_queued", count=self._queue.qsize())

    async def idle(self) -> None:
        """Return once every image queued so far is embedded (or has failed)."""
        await self._queue.join()

    async def embed(self, sources: Sequence[ImageSource]) -> int:
        """Embed and store these images; returns how many were stored, logs the rest."""
        pictures: list[tuple[ImageSource, bytes]] = []
        for source in sources:
            try:
                pictures.append((source, await self._in_thread(self._media.get, source.media_key)))
            except AtelierError as exc:
                log.warning("embedding_file_missing", image_id=source.image_id, error=str(exc))
        if not pictures or not await self._model_loads():
            return 0
        try:
            rows = await self._vectors([data for _, data in pictures])
        except AtelierError as exc:
            if len(pictures) == 1:
                log.warning("embedding_failed", image_id=pictures[0][0].image_id, error=str(exc))
                return 0
            # One bad file fails its batch: each is tried alone, so only it is left out.
            return sum([await self.embed([source]) for source, _ in pictures])
        stored = 0
        for (source, _), row in zip(pictures, rows, strict=True):
            try:
                await self._index.add(source.image_id, source.user_id, self.likeness.model, row)
                stored += 1
            except AtelierError as exc:  # deleted meanwhile
                log.info("embedding_not_stored", image_id=source.image_id, error=str(exc))
        return stored

    async def _model_loads(self) -> bool:
        """Whether the model is (or now gets) loaded; a failure is logged once per pause."""
        if time.monotonic() < self._model_retry_at:
            return False
        try:
            if self.likeness.remote is not None:
                await self.likeness.remote.load(self.likeness.model_id)
            else:
                await self._in_thread(
                    clip_embeddings.load_model, self.likeness.model_id, self.likeness.device
                )
        except AtelierError as exc:
            self._model_retry_at = time.monotonic() + MODEL_RETRY_S
            log.warning(
                "embedding_model_unavailable",
                model=self.likeness.model_id,
                error=str(exc),
                retry_in_s=MODEL_RETRY_S,
                effect="new images are left to `atelier gallery backfill` until it loads",
            )
            return False
        return True

    @property
    def _index(self) -> EmbeddingIndex:
        return self.likeness.index

    @property
    def _media(self) -> MediaStorage:
        return self.likeness.media

    async def _vectors(self, images: list[bytes]) -> Any:  # a float32 array, a row each
        if self.likeness.remote is not None:
            return await self.likeness.remote.embed_images(self.likeness.model_id, images)
        return await self._in_thread(
            clip_embeddings.embed_images, images, self.likeness.model_id, self.likeness.device
        )

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """On the worker's own thread when started (the app), else the default pool (CLI)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.embed(batch)
            except Exception:  # a bug here must not end embedding for the app's life
                log.exception("embedding_batch_failed", images=len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()


def build_likeness(
    settings: Settings, engine: AsyncEngine, media: MediaStorage
) -> tuple[Likeness, EmbeddingWorker | None]:
    """The app's likeness search and its worker; no worker when it is off or cannot run."""
    if not settings.gallery_likeness:
        return Likeness.unavailable(
            "Search by likeness is turned off; set ATELIER_GALLERY_LIKENESS=true and restart "
            "the app to turn it on."
        ), None
    # With a broker, workers embed: the app itself may lack torch.
    remote = clip_jobs.remote_clip(settings)
    if remote is None and not clip_embeddings.extra_installed():
        return Likeness.unavailable(
            "Search by likeness needs the local extra (torch and transformers): install it "
            f"with {clip_embeddings.EXTRA_HINT} and restart the app."
        ), None
    likeness = Likeness(
        EmbeddingIndex(engine), media, settings.clip_model, settings.local_device, remote
    )
    return likeness, EmbeddingWorker(likeness)


async def backfill(
    worker: EmbeddingWorker, batch: int, progress: Callable[[int, int, int], None]
) -> tuple[int, int]:
    """Embed every image that has no vector for the model yet; returns (stored, total).

    The images missing one are listed once, at the start, so one that fails is tried once
    a run (and again by the next run); images recorded meanwhile are the app's worker's.
    `progress(done, stored, total)` is called after each batch.
    """
    likeness = worker.likeness
    pending = await likeness.index.missing(likeness.model, limit=_NO_LIMIT)
    stored = 0
    for start in range(0, len(pending), batch):
        chunk = pending[start : start + batch]
        stored += await worker.embed(await likeness.index.sources(chunk))
        progress(start + len(chunk), stored, len(pending))
    return stored, len(pending)
