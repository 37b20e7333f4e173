"""One call's provider requests, sent in parallel and stored in request order.

A call for more images than the model makes per request is split into parts (see
`image_jobs.parts`), each sent through the provider's gate (pipelines/provider_limits.py:
a per-provider limit and one shared pause on a 429). A part is stored as soon as the ones
before it are, so the order is the request's whatever order the provider answers in; a
failed part does not stop the others unless its error would fail them all (then parts
not yet sent are skipped, those in flight finish: the provider may already be billing
them); a stop cancels every part still in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from core.errors import (
    AtelierError,
    BackendNotConfigured,
    InvalidInput,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
)
from memory.images import ImageRecord
from pipelines import provider_limits
from pipelines.images.base import ImageBackend, ImageRequest, ImageResult
from pipelines.progress import Progress, ProgressUpdate
from tools.context import ToolContext

Made = tuple[ImageResult, int]  # a part's result and how long it took, in ms
# Stores a part's images (with its request) and adds any note; returns what it stored.
PartRecorder = Callable[[Made, ImageRequest, list[str]], Awaitable[list[tuple[ImageRecord, bytes]]]]


async def in_parts(
    ctx: ToolContext,
    backend: ImageBackend,
    request: ImageRequest,
    counts: list[int],
    shown: Progress | None,
    record: PartRecorder,
) -> tuple[list[tuple[ImageRecord, bytes]], list[str]]:
    """Send `request` as parts of `counts` images; (stored images in order, notes)."""
    notes: list[str] = []
    batch = _Batch(shown, counts)
    offsets = [sum(counts[:index]) for index in range(len(counts))]
    requests = [
        replace(request, n=count, seed=None if request.seed is None else request.seed + offset)
        for count, offset in zip(counts, offsets, strict=True)
    ]
    turns = [asyncio.Event() for _ in counts]  # part i has been recorded (or given up)
    stored: list[list[tuple[ImageRecord, bytes]]] = [[] for _ in counts]
    failures: list[BaseException | None] = [None] * len(counts)

    async def part(index: int) -> None:
        try:
            outcome: Made | BaseException
            try:
                outcome = await request_once(
                    ctx,
                    backend,
                    requests[index],
                    batch.progress(),
                    stop=batch.should_stop,
                    batched=True,
                )
            except Exception as exc:  # one part's failure, whatever it is, is that part's
                outcome = exc
                batch.failed(exc)
            if index:
                await turns[index - 1].wait()  # stored in request order, not arrival order
            if isinstance(outcome, BaseException):
                failures[index] = outcome
            else:
                stored[index] = await record(outcome, requests[index], notes)
                batch.stored(len(stored[index]))
        except asyncio.CancelledError:
            batch.stopping = True
            raise
        finally:
            turns[index].set()

    # A stop cancels this task; the group then cancels every part still running. An error
    # while storing (a part's own failure is caught above) does the same, and stands.
    try:
        async with asyncio.TaskGroup() as group:
            for index in range(len(counts)):
                group.create_task(part(index))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    if shown is not None and shown.cancelled:
        raise asyncio.CancelledError("stopped by the user")
    images = [pair for made in stored for pair in made]
    missing = request.n - len(images)
    real = [f for f in failures if f is not None and not isinstance(f, _Skipped)]
    if not images:
        raise real[0] if real else asyncio.CancelledError("stopped")
    if missing:
        why = _message(real[0]) if real else "the request was stopped"
        notes.append(
            f"{missing} of {request.n} images could not be made ({why}); they were not charged."
        )
    return images, notes


class _Skipped(Exception):
    """A part not sent because an earlier part's error would fail it too."""


# Errors that every part of a call would meet: once one part has one, parts not yet
# sent are not sent (those in flight finish: the provider may already be billing them).
_FAILS_ALL = (InvalidInput, ModelUnavailable, BackendNotConfigured, QuotaExhausted, RateLimited)


def _message(error: BaseException) -> str:
    text = error.message if isinstance(error, AtelierError) else type(error).__name__
    return text.rstrip(". ")


class _Batch:
    """The parts of one call: one progress bar for all, and whether to send any more."""

    def __init__(self, shown: Progress | None, counts: list[int]) -> None:
        self.shown = shown
        self.total = sum(counts)
        self.done = 0
        self.stopping = False

    def should_stop(self) -> bool:
        return self.stopping or (self.shown is not None and self.shown.cancelled)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, _FAILS_ALL):
            self.stopping = True

    def stored(self, count: int) -> None:
        self.done += count
        if self.shown is not None:
            self.shown.report(self.done, self.total, f"{self.done} of {self.total} images")

    def progress(self) -> Progress | None:
        return None if self.shown is None else _PartProgress(self)

    async def forward(self, update: ProgressUpdate) -> None:
        if self.shown is not None and update.note:
            self.shown.report(self.done, self.total, update.note, preview=update.preview)


class _PartProgress(Progress):
    """One part's progress: its notes go to the call's bar; a stop there stops it too."""

    def __init__(self, batch: _Batch) -> None:
        super().__init__(batch.forward)
        self._batch = batch

    @property
    def cancelled(self) -> bool:
        shown = self._batch.shown
        return super().cancelled or (shown is not None and shown.cancelled)


async def request_once(
    ctx: ToolContext,
    backend: ImageBackend,
    request: ImageRequest,
    progress: Progress | None,
    *,
    stop: Callable[[], bool] | None = None,
    batched: bool = False,
) -> tuple[ImageResult, int]:
    """One provider request in one of the provider's slots: (result, its duration in ms).

    `stop` says to send nothing after all; `batched`: one of several parts of a call.
    """

    async def once() -> tuple[ImageResult, int]:
        if stop is not None and stop():
            raise _Skipped()
        started = time.perf_counter()
        result = await backend.generate(request, progress)
        return result, int((time.perf_counter() - started) * 1000)

    def waiting(paused_s: float, ahead: int) -> None:
        if progress is None:
            return
        if paused_s > 0:
            progress.report(0, 0, f"{backend.label} asked to wait: resuming in {paused_s:.0f} s")
        elif not batched:  # a batch's own parts waiting for each other is no news
            progress.report(0, 0, f"waiting: {ahead} ahead")

    try:
        return await provider_limits.call(backend.id, once, waiting=waiting)
    except ModelUnavailable as exc:
        catalogue = ctx.services.backends.catalogue
        hint = catalogue.replacement_hint(exc.backend, exc.model) if catalogue else ""
        raise ModelUnavailable(exc.message + hint, exc.backend, exc.model) from exc
