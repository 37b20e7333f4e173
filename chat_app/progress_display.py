"""Progress bars and previews in the chat for running jobs (local steps, hosted polling).

A tool may start several jobs; each gets its own message, created on the first report
and removed when the tool call ends, so the conversation keeps only the results. The
message is live only: it is sent, updated and removed over the session's socket and
never written to the database, so a reopened conversation cannot show a leftover bar
or preview, whatever order writes would have reached the database in.

Updates are throttled to one per `MIN_INTERVAL_S` (a fast sampler reports every step,
the browser needs ~4 a second), and the newest one is always shown at the end of an
interval: a last partial image arriving just after an update is not lost. A job's
preview (`pipelines.progress.Preview`) is an image element of that message, sent again
under the same id when the picture changes (Chainlit's front end replaces an element
whose id it knows). It travels inline as a data: URI, so no file is written for it.

A new preview waits `PREVIEW_HOLD_S` before it is sent, and is dropped if the result (or
a newer preview) comes first: a provider that answers quickly sends its partial images
and its result together, and forwarding a 100 KB-2 MB picture that the result replaces
a moment later was most of the socket traffic (and a tenth of the CPU) of an image turn
at 50 sessions. Previews that arrive seconds apart, as they do while a picture is being
drawn, are shown a quarter of a second later than they came.

For the same reason the bar itself first appears `BAR_HOLD_S` after its job started: a
job done sooner (a provider that answers at once, a cached result) never shows a bar
that would be removed a moment later. That bar was two of an image turn's socket
events, and neither could be seen. The tool's own step shows the call from the start.
"""

from __future__ import annotations

import asyncio
import math
import time

import chainlit as cl
from chainlit.context import context

from chat_app.step_clock import utc_now
from pipelines import previews
from pipelines.progress import Preview, Progress, ProgressUpdate

MIN_INTERVAL_S = 0.25
PREVIEW_HOLD_S = 0.25
BAR_HOLD_S = 0.25
BAR_CELLS = 20


def render(label: str, update: ProgressUpdate) -> str:
    filled = round(update.fraction * BAR_CELLS)
    bar = "█" * filled + "░" * (BAR_CELLS - filled)
    # A total of 100 is a percentage (hosted jobs); other totals count steps or images.
    if update.total == 100:
        figures = f"{update.done}%"
    else:
        figures = f"{update.done}/{update.total}" if update.total > 1 else ""
    note = f" · {update.note}" if update.note else ""
    return f"⏳ **{label}** `{bar}` {figures}{note}"


class _Display:
    """One job's live message: its bar, and its newest preview under it."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.message: cl.Message | None = None
        self.image: cl.Image | None = None
        self.shown_text: str | None = None
        self.shown_preview: Preview | None = None
        self.preview_at = -math.inf  # when the newest preview came
        self.latest: ProgressUpdate | None = None
        self.last_sent = -math.inf
        self.opened = time.monotonic()  # the job's start: the bar waits BAR_HOLD_S
        self.later: asyncio.Task[None] | None = None
        # One send at a time: two first reports racing would make two messages.
        self.lock = asyncio.Lock()
        self.closed = False
        self.progress = Progress(self.show)

    async def show(self, update: ProgressUpdate) -> None:
        if self.closed:
            return
        if update.preview is not None and (
            self.latest is None or update.preview is not self.latest.preview
        ):
            self.preview_at = time.monotonic()
        self.latest = update
        due = max(self.last_sent + MIN_INTERVAL_S, self.opened + BAR_HOLD_S)
        wait = due - time.monotonic()
        if wait <= 0:
            await self._send()
        elif self.later is None:
            self.later = asyncio.ensure_future(self._send_after(wait))

    async def _send_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self.later = None
        await self._send()

    async def _send(self) -> None:
        async with self.lock:
            update = self.latest
            if self.closed or update is None:
                return
            self.last_sent = time.monotonic()
            text = render(self.label, update)
            if self.message is None:
                self.message = cl.Message(content=text, author="Atelier")
                self.message.created_at = utc_now()
                await context.emitter.send_step(self.message.to_dict())
            elif text != self.shown_text:
                self.message.content = text
                await context.emitter.update_step(self.message.to_dict())
            self.shown_text = text
            if update.preview is not None and update.preview is not self.shown_preview:
                held = self.preview_at + PREVIEW_HOLD_S - time.monotonic()
                if held <= 0:
                    await self._show_preview(self.message, update.preview)
                elif self.later is None:
                    self.later = asyncio.ensure_future(self._send_after(held))

    async def _show_preview(self, message: cl.Message, preview: Preview) -> None:
        url = previews.data_uri(preview)
        if self.image is None:
            self.image = cl.Image(
                url=url,
                name=f"{self.label} preview",
                display="inline",
                size="medium",
                mime=preview.mime,
            )
        else:
            self.image.url = url
        await self.image.send(for_id=message.id, persist=False)
        self.shown_preview = preview

    async def close(self) -> None:
        self.closed = True
        if self.later is not None:
            self.later.cancel()
            self.later = None
        async with self.lock:  # a send under way finishes first
            if self.image is not None:
                await context.emitter.emit("remove_element", {"id": self.image.id})
            if self.message is not None:
                await context.emitter.delete_step(self.message.to_dict())
            self.message, self.image = None, None


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
