"""A bar for a job that reports no steps of its own: stages seen, and time spent.

OpenAI answers an image request in one piece (or with a few partial images when
streamed), so its bar has nothing to move with but the partial images and the clock.
The clock is measured against how long the last requests of the same kind took in this
process (`Durations`), never against a made-up figure, and the note says it is an
estimate. Time alone stops short of the end (`CAP`): the request may run long, and a full
bar that keeps waiting tells the user something false.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

from pipelines.progress import Preview, Progress


class Durations:
    """How long the last `KEEP` jobs of each kind took: what "typical" means here."""

    KEEP = 5

    def __init__(self) -> None:
        self._seen: dict[Hashable, deque[float]] = {}

    def typical(self, kind: Hashable) -> float | None:
        seen = self._seen.get(kind)
        return statistics.median(seen) if seen else None

    def add(self, kind: Hashable, seconds: float) -> None:
        self._seen.setdefault(kind, deque(maxlen=self.KEEP)).append(seconds)


class ElapsedBar:
    """Moves with the stages received (e.g. partial images) and with the time spent."""

    TICK_S = 1.0
    CAP = 0.95

    def __init__(
        self, progress: Progress, label: str, stages: int = 0, typical_s: float | None = None
    ) -> None:
        self.progress, self.label = progress, label
        self.stages, self.typical_s = stages, typical_s
        self.started = time.monotonic()
        self.received = 0

    def stage(self, index: object, preview: Preview | None = None) -> None:
        """Stage `index` (from 0) arrived, perhaps with a picture of the work so far."""
        number = index + 1 if isinstance(index, int) and index >= 0 else self.received + 1
        self.received = max(self.received, min(number, self.stages))
        self.update(preview)

    def update(self, preview: Preview | None = None) -> None:
        elapsed = time.monotonic() - self.started
        # The result is the last stage: `stages` previews fill the bar up to its last part.
        by_stages = self.received / (self.stages + 1) if self.stages else 0.0
        by_time = min(self.CAP, elapsed / self.typical_s) if self.typical_s else 0.0
        notes = [self.label]
        if self.received:
            notes.append(f"preview {self.received} of {self.stages}")
        if self.typical_s:
            notes.append(f"{elapsed:.0f} s of ~{self.typical_s:.0f} s typical here (estimate)")
        else:
            notes.append(f"{elapsed:.0f} s")
        done = round(100 * max(by_stages, by_time))
        self.progress.report(done, 100, " · ".join(notes), preview=preview)

    async def tick(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(self.TICK_S)


@asynccontextmanager
async def ticking(bar: ElapsedBar | None) -> AsyncIterator[None]:
    """`bar` updated every `TICK_S` while the block runs (nothing for no bar)."""
    if bar is None:
        yield
        return
    ticker = asyncio.ensure_future(bar.tick())
    try:
        yield
    finally:
        ticker.cancel()
