"""Progress bars in the chat for running jobs (local steps, hosted polling).

A tool may start several jobs; each gets its own message, created on the first report
and removed when the tool call ends, so the conversation keeps only the results.
Updates are throttled: a fast sampler reports every step, the browser needs ~4 a second.
"""

from __future__ import annotations

import time

import chainlit as cl

from pipelines.progress import Progress, ProgressUpdate

MIN_INTERVAL_S = 0.25
BAR_CELLS = 20


def render(label: str, update: ProgressUpdate) -> str:
    filled = round(update.fraction * BAR_CELLS)
    bar = "█" * filled + "░" * (BAR_CELLS - filled)
    figures = f"{update.done}/{update.total}" if update.total > 1 else ""
    note = f" · {update.note}" if update.note else ""
    return f"⏳ **{label}** `{bar}` {figures}{note}"


class _Display:
    def __init__(self, label: str) -> None:
        self.label = label
        self.message: cl.Message | None = None
        self.last_sent = 0.0
        self.progress = Progress(self.show)

    async def show(self, update: ProgressUpdate) -> None:
        now = time.monotonic()
        final = update.total > 0 and update.done >= update.total
        if self.message is not None and now - self.last_sent < MIN_INTERVAL_S and not final:
            return
        self.last_sent = now
        text = render(self.label, update)
        if self.message is None:
            self.message = cl.Message(content=text, author="Atelier")
            await self.message.send()
        else:
            self.message.content = text
            await self.message.update()

    async def close(self) -> None:
        if self.message is not None:
            await self.message.remove()
            self.message = None


class ProgressDisplays:
    """The progress bars of one tool call (its port's `progress`)."""

    def __init__(self) -> None:
        self._displays: list[_Display] = []

    def new(self, label: str) -> Progress:
        display = _Display(label)
        self._displays.append(display)
        return display.progress

    def cancel_all(self) -> None:
        for display in self._displays:
            display.progress.cancel()

    async def close(self) -> None:
        for display in self._displays:
            await display.close()
        self._displays.clear()
