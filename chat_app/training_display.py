"""A training's progress in the chat: one message, a loss chart, sample images.

The job runs in a background task created inside the tool call, so it carries that
call's Chainlit context (asyncio copies context variables into new tasks): its
messages go to the session that started it. Everything shown is also written through
the data layer (`Message.update` persists the step; elements are stored before they are
shown, as `rendering.send_in_order` does), so a reloaded page shows the latest state.
Messages are made top-level: inside the tool's step the UI would fold them away.

The chart is re-sent every `CHART_EVERY_S` with the same element id replaced (old one
deleted from the store, new one stored), so a reload finds exactly one, current chart.

A page reloaded (or opened in another tab) while the training runs is a new session:
the message's text updates (step, loss, time left, the end) are sent to the user's
other sessions on the same thread too, so progress stays live there; the chart and
samples there are those saved when the page loaded.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import chainlit as cl
from chainlit.context import context_var, local_steps
from chainlit.data import get_data_layer

from chat_app import progress_display, rendering
from core.logging_setup import get_logger
from memory.loras import LoraRecord
from pipelines.progress import ProgressUpdate
from tools.training_estimate import duration

log = get_logger(__name__)

CHART_EVERY_S = 3.0
MIN_INTERVAL_S = 0.5


def loss_chart(record: LoraRecord) -> Any:
    from plotly import graph_objects as go  # only a training needs it

    figure = go.Figure()
    figure.add_scatter(
        x=[step for step, _ in record.losses],
        y=[loss for _, loss in record.losses],
        mode="lines",
        name="loss",
    )
    figure.update_layout(
        title=f"Training loss — {record.name}", xaxis_title="step", yaxis_title="loss"
    )
    return figure


class ChatTrainingDisplay:
    """The `TrainingWatcher` for one training, bound to the session that started it."""

    def __init__(self, record: LoraRecord, head: str) -> None:
        self.head = head
        self.message = cl.Message(content=head, author="Atelier")
        rendering.beside_current_step(self.message)  # in the turn that started it
        self.thread_id = record.thread_id
        self.origin = cl.context.session
        self.chart: cl.Plotly | None = None
        self.last_text = 0.0
        self.last_chart = 0.0

    @property
    def message_id(self) -> str:
        return self.message.id

    async def open(self) -> None:
        token = local_steps.set(None)
        try:
            await self.message.send()
        finally:
            local_steps.reset(token)

    async def update(self, record: LoraRecord, note: str, eta_s: float | None) -> None:
        now = time.monotonic()
        if now - self.last_text < MIN_INTERVAL_S:
            return
        self.last_text = now
        bar = progress_display.render(
            f"LoRA '{record.name}'", ProgressUpdate(record.step, record.total_steps, note)
        )
        eta = f" · about {duration(eta_s)} left" if eta_s else ""
        self.message.content = f"{self.head}\n\n{bar}{eta}"
        await self.message.update()
        await self._mirror()
        if record.losses and now - self.last_chart >= CHART_EVERY_S:
            self.last_chart = now
            await self._chart(record)

    async def sample(self, record: LoraRecord, step: int, path: Path) -> None:
        image = cl.Image(
            content=await asyncio.to_thread(path.read_bytes),
            name=f"{record.name}-sample-step-{step}.png",
            display="inline",
            size="small",
            mime="image/png",
        )
        await self._store_and_show(image)

    async def finished(self, record: LoraRecord, text: str) -> None:
        self.message.content = f"{self.head}\n\n{text}"
        await self.message.update()
        await self._mirror()
        if record.losses:
            await self._chart(record)

    async def _mirror(self) -> None:
        await rendering.mirror_update(self.origin, self.thread_id, self.message, "training")

    async def _chart(self, record: LoraRecord) -> None:
        old = self.chart
        self.chart = cl.Plotly(
            name=f"{record.name}-loss", figure=loss_chart(record), display="inline"
        )
        if old is not None:
            self.chart.id = old.id  # the front end replaces an element with the same id
            data_layer = get_data_layer()
            if data_layer is not None:
                await data_layer.delete_element(old.id, record.thread_id)
        await self._store_and_show(self.chart)

    async def _store_and_show(self, element: cl.Element) -> None:
        element.for_id = self.message.id
        data_layer = get_data_layer()
        if data_layer is not None:
            await data_layer.create_element(element)
        await element.send(for_id=self.message.id, persist=False)


async def watch(record: LoraRecord, head: str) -> ChatTrainingDisplay | None:
    """The WatcherFactory the app gives TrainingJobs; None outside a chat session."""
    if context_var.get(None) is None:
        return None
    display = ChatTrainingDisplay(record, head)
    await display.open()
    return display
