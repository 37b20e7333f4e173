"""A batch in the chat: one progress message updated in place, then its summary.

The message is made by start_batch before the batch row (its id is the batch's
`message_id`) and is timestamped with the batch's creation, so a later display of the
same batch (Resume pressed after a reload, in another tab, after a restart) updates the
same message in place rather than adding one: Chainlit's upsert keeps its place.

Like chat_app/training_display.py, the updates come from a background task that carries
the starting session's Chainlit context; the text is mirrored to the user's other pages
on the same thread, and everything is written through the data layer, so a reloaded
page shows the latest state. Pause / Resume / Stop are Chainlit actions on the message
(callbacks in chat_app/handlers.py); the batch id in their payload comes from the
browser, so each press is checked against the presser's own batches by the store.

A batch that ended while nobody watched (adopted after a restart, or its page closed
before the end) is told once, with its summary and contact sheet, when its conversation
is opened or next written in (`tell_finished`, marked told in the database).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

import chainlit as cl
from chainlit.context import context_var, local_steps

from chat_app import progress_display, rendering
from core import money
from core.errors import AtelierError
from core.logging_setup import get_logger
from pipelines.progress import ProgressUpdate
from tools.batch_runner import BatchSummary
from tools.batch_setup import SHORT_ID, links
from tools.training_estimate import duration

if TYPE_CHECKING:
    from chat_app.runtime import Runtime
    from memory.batches import BatchItemRecord, BatchRecord, BatchStore

log = get_logger(__name__)

PAUSE, RESUME, STOP = "batch_pause", "batch_resume", "batch_stop"
MIN_INTERVAL_S = 0.5
SHOWN_RUNNING = 6  # labels of running items shown
SHOWN_FAILURES = 5  # latest failures shown while it runs
SHOWN_FAILED = 8  # failures listed in the summary (the zip's manifest has all)


class ChatBatchDisplay:
    """The BatchWatcher of one batch, bound to the session that shows it."""

    def __init__(self, store: BatchStore, thread_id: str, batch: BatchRecord | None) -> None:
        self.store = store
        self.thread_id = cl.context.session.thread_id or thread_id  # where it is shown
        self.message = cl.Message(content="", author="Atelier")
        here = cl.context.session.thread_id == batch.thread_id if batch is not None else False
        if batch is not None and batch.message_id and here:  # else a new one, here
            self.message.id = batch.message_id
            self.message.created_at = _stamp(batch)
        self.sent = self.message.id == getattr(batch, "message_id", None)
        if not self.sent:
            rendering.beside_current_step(self.message)  # in the turn that started it
        self.origin = cl.context.session
        # The session's Chainlit context: a batch adopted after a restart runs in a task
        # started without one, so each update and the end are shown in this one.
        self.context = context_var.get()
        self.last_text = 0.0
        self.failed_seen = -1
        self.buttons: set[str] | None = None  # the names of the buttons shown
        self.batch_id = batch.id if batch is not None else ""
        self.failures: list[tuple[str, str]] = []

    @property
    def message_id(self) -> str:
        return self.message.id

    def watcher(self) -> ChatBatchDisplay:
        return self

    async def open(self, batch: BatchRecord) -> None:
        """The first state, as a top-level message (a tool's step would fold it away)."""
        self.batch_id = batch.id
        self.message.created_at = _stamp(batch)
        self.message.content = _head(batch) + "\n\nStarting…"
        await self._show(_actions(batch))

    async def update(
        self,
        batch: BatchRecord,
        counts: dict[str, int],
        running: list[BatchItemRecord],
        eta_s: float | None,
    ) -> None:
        token = context_var.set(self.context)
        try:
            await self._update(batch, counts, running, eta_s)
        finally:
            context_var.reset(token)

    async def finished(self, batch: BatchRecord, summary: BatchSummary) -> None:
        token = context_var.set(self.context)
        try:
            await self._finished(batch, summary)
        finally:
            context_var.reset(token)

    async def _update(
        self,
        batch: BatchRecord,
        counts: dict[str, int],
        running: list[BatchItemRecord],
        eta_s: float | None,
    ) -> None:
        now = time.monotonic()
        paused = batch.status == "paused"
        if now - self.last_text < MIN_INTERVAL_S and not paused:
            return
        self.last_text = now
        if counts.get("failed", 0) != self.failed_seen:
            self.failed_seen = counts.get("failed", 0)
            self.failures = await self._failures(batch)
        self.message.content = progress_text(batch, counts, running, eta_s, self.failures)
        await self._show(_actions(batch))

    async def _finished(self, batch: BatchRecord, summary: BatchSummary) -> None:
        if summary.contact_sheet:  # first: when the summary shows, its sheet is there
            await self._contact_sheet(batch, summary.contact_sheet)
        await self.store.mark_told(batch.id)  # shown here: not told again on return
        self.message.content = summary_text(batch, summary)
        await self._show([])

    async def _failures(self, batch: BatchRecord) -> list[tuple[str, str]]:
        items = await self.store.items(batch.id, batch.user_id)
        failed = [item for item in items if item.status == "failed"]
        failed.sort(key=lambda item: item.updated_at)
        return [(item.label, item.error or "failed") for item in failed[-SHOWN_FAILURES:]]

    async def _show(self, actions: list[cl.Action]) -> None:
        if self.sent:
            await self.message.update()
        else:  # top-level: inside a tool's step the UI would fold it away
            token = local_steps.set(None)
            try:
                await self.message.send()
            finally:
                local_steps.reset(token)
            self.sent = True
        wanted = _names(actions)
        if wanted != self.buttons:
            # Buttons have one id per batch and name, so whichever display sent them
            # (before a pause, a reload, a restart) they are replaced, never doubled.
            for action in _actions_all(self.batch_id):
                await action.remove()
            for action in actions:
                await action.send(for_id=self.message.id)
            self.buttons = wanted
        await self._mirror()

    async def _contact_sheet(self, batch: BatchRecord, sheet: bytes) -> None:
        image = cl.Image(
            content=sheet,
            name=f"contact-sheet-{batch.id[:SHORT_ID]}.png",
            display="inline",
            size="large",
            mime="image/png",
        )
        await rendering.send_in_order(self.message, [image])

    async def _mirror(self) -> None:
        await rendering.mirror_update(self.origin, self.thread_id, self.message, "batch")


def factory(store: BatchStore) -> Callable[[str, BatchRecord | None], ChatBatchDisplay | None]:
    """start_batch's DisplayFactory (tools/start_batch.py); None outside a chat session."""

    def display(thread_id: str, batch: BatchRecord | None) -> ChatBatchDisplay | None:
        if context_var.get(None) is None:
            return None
        return ChatBatchDisplay(store, thread_id, batch)

    return display


# ------------------------------------------------------------------------------ texts


def _head(batch: BatchRecord) -> str:
    return f"**{batch.title}** · batch `{batch.id[:SHORT_ID]}`"


def progress_text(
    batch: BatchRecord,
    counts: dict[str, int],
    running: list[BatchItemRecord],
    eta_s: float | None,
    failures: list[tuple[str, str]],
) -> str:
    total = batch.item_count
    ended = counts.get("done", 0) + counts.get("failed", 0)
    retrying = sum(1 for item in running if item.attempts)
    figures = [
        f"**{counts.get('done', 0)}** done",
        f"**{counts.get('running', 0)}** running",
        *([f"**{retrying}** retrying"] if retrying else []),
        f"**{counts.get('failed', 0)}** failed",
        f"**{counts.get('pending', 0)}** waiting",
    ]
    paused = batch.status == "paused"
    if paused:
        state = "**Paused**: no new item starts. Resume continues with the items not done."
    else:
        state = f"About {duration(eta_s)} left." if eta_s else ""
    update = ProgressUpdate(ended, total, "paused" if paused else None)
    # The bar as every progress in the chat draws it, without the hourglass: the
    # message's own words say whether it runs.
    bar = progress_display.render("Batch", update).removeprefix("⏳ ")
    lines = [_head(batch), bar, " · ".join(figures)]
    if state:
        lines.append(state)
    if running and batch.status == "running":
        names = ", ".join(item.label for item in running[:SHOWN_RUNNING])
        more = f" and {len(running) - SHOWN_RUNNING} more" if len(running) > SHOWN_RUNNING else ""
        lines.append(f"Now making: {names}{more}")
    if failures:
        lines.append(
            "Latest failures:\n" + "\n".join(f"- {label}: {why}" for label, why in failures)
        )
    return "\n\n".join(lines)


def summary_text(batch: BatchRecord, summary: BatchSummary) -> str:
    total = batch.item_count
    if summary.status == "stopped":
        head = f"**Batch stopped: {batch.title}** · `{batch.id[:SHORT_ID]}`"
    else:
        head = f"**Batch finished: {batch.title}** · `{batch.id[:SHORT_ID]}`"
    figures = f"{summary.done} of {total} done, {len(summary.failed)} failed"
    if summary.not_run:
        figures += f", {summary.not_run} not run"
    lines = [
        head,
        f"{figures} · cost {money.usd(summary.cost_usd, 4)} (up to "
        f"{money.usd(batch.estimate_usd, 4)} was estimated) · {duration(summary.elapsed_s)}",
    ]
    if summary.stop_reason:
        lines.append(f"Why it stopped: {summary.stop_reason}")
    if summary.failed:
        shown = summary.failed[:SHOWN_FAILED]
        more = len(summary.failed) - len(shown)
        lines.append(
            "Failed:\n"
            + "\n".join(f"- {label}: {why}" for label, why in shown)
            + (f"\n- … and {more} more (`/batch status {batch.id[:SHORT_ID]}`)" if more else "")
        )
    lines.append(links(batch.id))
    return "\n\n".join(lines)


def _actions(batch: BatchRecord) -> list[cl.Action]:
    if batch.status == "running":
        return [_action(batch.id, PAUSE), _action(batch.id, STOP)]
    if batch.status == "paused":
        return [_action(batch.id, RESUME), _action(batch.id, STOP)]
    return []


def _actions_all(batch_id: str) -> list[cl.Action]:
    return [_action(batch_id, name) for name in (PAUSE, RESUME, STOP)]


_LOOKS = {PAUSE: ("Pause", "pause"), RESUME: ("Resume", "play"), STOP: ("Stop", "square")}


def _action(batch_id: str, name: str) -> cl.Action:
    label, icon = _LOOKS[name]
    return cl.Action(
        id=f"{name}-{batch_id}", name=name, label=label, icon=icon, payload={"batch_id": batch_id}
    )


def _names(actions: list[cl.Action]) -> set[str]:
    return {action.name for action in actions}


def _stamp(batch: BatchRecord) -> str:
    """The message's time: the batch's creation, as Chainlit writes times."""
    return batch.created_at.replace(tzinfo=None).isoformat() + "Z"


# ------------------------------------------------------------------ buttons, telling


async def act(runtime: Runtime, action: cl.Action) -> None:
    """Pause, Resume or Stop pressed: the presser's own batch only."""
    from chat_app.turn import current_user_id

    runner = runtime.services.batches
    batch_id = (action.payload or {}).get("batch_id")
    try:
        if runner is None:
            raise AtelierError("Batches are not available in this app.")
        if not isinstance(batch_id, str) or not batch_id:
            raise AtelierError("That button names no batch.")
        user_id = await current_user_id(runtime)
        if action.name == PAUSE:
            await runner.pause(batch_id, user_id)
        elif action.name == STOP:
            await runner.stop(batch_id, user_id)
        else:
            batch = await runner.store.get(batch_id, user_id)
            display = ChatBatchDisplay(runner.store, batch.thread_id, batch)
            await runner.resume(batch_id, user_id, display)
        log.info("batch_action", action=action.name, batch=batch_id)
    except AtelierError as exc:
        await rendering.error(exc.message)


async def tell_finished(
    runtime: Runtime, user_id: str, thread_id: str, *, known_only: bool = False
) -> None:
    """The conversation's batches that ended unseen: their summary, once.

    `known_only` (every turn): look only when the runner knows of such a batch in this
    conversation, so an ordinary turn pays no query for it.
    """
    runner = runtime.services.batches
    if runner is None or (known_only and thread_id not in runner.untold_threads):
        return
    runner.untold_threads.discard(thread_id)
    store = runner.store
    for batch in await store.untold_finished(user_id, thread_id):
        if not await store.mark_told(batch.id):  # its own display (or another page) did
            continue
        items = await store.items(batch.id, user_id)
        summary = summary_of(batch, items)
        message = cl.Message(content=summary_text(batch, summary), author="Atelier")
        await message.send()
        if items and any(item.image_ids for item in items):
            sheet = await runner.contact_sheet(batch.id, user_id)
            image = cl.Image(
                content=sheet,
                name=f"contact-sheet-{batch.id[:SHORT_ID]}.png",
                display="inline",
                size="large",
                mime="image/png",
            )
            await rendering.send_in_order(message, [image])
        log.info("batch_told", batch=batch.id, status=batch.status)


def summary_of(batch: BatchRecord, items: list[BatchItemRecord]) -> BatchSummary:
    end = batch.finished_at or batch.updated_at
    return BatchSummary(
        done=sum(item.status == "done" for item in items),
        failed=[(item.label, item.error or "failed") for item in items if item.status == "failed"],
        cost_usd=sum((item.cost_usd for item in items), Decimal(0)),
        elapsed_s=(end - batch.created_at).total_seconds(),
        contact_sheet_key=None,
        status=batch.status,
        stop_reason=batch.stop_reason,
        not_run=sum(item.status == "pending" for item in items),
    )


async def restore_buttons(runtime: Runtime, user_id: str, thread_id: str) -> None:
    """A resumed conversation's running or paused batches get their buttons again
    (Chainlit keeps no actions), and one nobody watches gets this page's display."""
    runner = runtime.services.batches
    if runner is None:
        return
    for batch in await runner.store.for_thread(thread_id, user_id):
        if batch.message_id and batch.status in ("running", "paused"):
            for action in _actions(batch):
                await action.send(for_id=batch.message_id)
            # Adopted after a restart, it runs here unwatched: this page shows it live.
            runner.watch(batch.id, ChatBatchDisplay(runner.store, batch.thread_id, batch))
