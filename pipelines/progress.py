"""Progress out of a running job and cancellation into it, across threads.

Local pipelines run in worker threads and hosted ones poll from the event loop; both
report through the same object. `report` may be called from any thread: it only stores
the latest figures and wakes the loop, so a fast step callback never floods the chat.
`cancel()` is what the chat calls when the user presses stop; a worker checks
`cancelled` between steps.

A job may also show what it has made so far (`show`): a small `Preview` picture (a
partial image OpenAI streamed, a decoded latent, an intermediate output). Each update
carries the newest preview, so a listener that skipped some updates still shows the
latest picture; making previews is worth it only when someone watches (`watched`).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from core.logging_setup import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class Preview:
    """A small picture of the work so far (encoded bytes), never stored: the result
    replaces it. Compared by identity: each one is a new picture."""

    data: bytes
    mime: str
    width: int
    height: int


@dataclass(frozen=True)
class ProgressUpdate:
    done: int
    total: int
    note: str = ""
    preview: Preview | None = None  # the newest preview so far; None: none yet

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


Listener = Callable[[ProgressUpdate], Awaitable[None]]


class Progress:
    def __init__(self, listener: Listener | None = None) -> None:
        self._listener = listener
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._latest: ProgressUpdate | None = None
        self._preview: Preview | None = None
        self._pending = False
        self.history: list[ProgressUpdate] = []
        # The listener runs in the creator's context (e.g. Chainlit's session context
        # variable), not the worker thread's, which has none.
        self._context = contextvars.copy_context()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    @property
    def watched(self) -> bool:
        """Someone shows these updates: previews are worth making."""
        return self._listener is not None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def latest(self) -> ProgressUpdate | None:
        return self._latest

    @property
    def previews(self) -> list[Preview]:
        """Every distinct preview reported so far, oldest first."""
        seen: list[Preview] = []
        for update in self.history:
            if update.preview is not None and (not seen or seen[-1] is not update.preview):
                seen.append(update.preview)
        return seen

    def report(self, done: int, total: int, note: str = "", preview: Preview | None = None) -> None:
        """Record progress (and a newer preview); thread-safe, never blocks on the listener."""
        with self._lock:
            self._preview = preview or self._preview
            self._record(ProgressUpdate(done, total, note, self._preview))

    def show(self, preview: Preview) -> None:
        """A newer picture of the work, with the latest figures; thread-safe."""
        with self._lock:
            latest = self._latest or ProgressUpdate(0, 0)
            self._preview = preview
            self._record(ProgressUpdate(latest.done, latest.total, latest.note, preview))

    def _record(self, update: ProgressUpdate) -> None:
        """Under the lock: keep `update` and wake the loop once for any number of them."""
        self._latest = update
        self.history.append(update)
        schedule = not self._pending and self._listener is not None
        self._pending = self._pending or schedule
        if schedule and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, context=self._context)

    def _deliver(self) -> None:
        with self._lock:
            self._pending = False
            update = self._latest
        if update is not None and self._listener is not None:
            asyncio.ensure_future(self._safe_listen(update))

    async def _safe_listen(self, update: ProgressUpdate) -> None:
        # A display failing must never fail the job it displays.
        try:
            await self._listener(update)  # type: ignore[misc]
        except Exception:
            log.warning("progress_display_failed", exc_info=True)
