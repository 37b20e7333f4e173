"""Batches as durable background jobs: a confirmed list of items run concurrently, checked,
retried, resumable after a crash, summed up at the end.

Why here (tools/) and not in chat_app: starting, pausing and stopping are tool actions,
money goes through `tools.spending`, and a batch outlives the message that started it.
The chat supplies a `BatchWatcher`; without one (a schedule, a test) a batch runs the same
and only the database shows it.

Durability: the rows are the truth (memory/batches.py). An item is taken by a
compare-and-set (`next_pending`); after a crash another process adopts the batch and
its interrupted items run on without paying twice (tools/batch_quality.py: one item's
attempts, checks, retries and recovery). Counts are kept in memory while a batch runs
here, so an item costs a handful of single-row writes and no scans; the row is re-read
every STATUS_EVERY_S for a pause or stop made by another process.

Length: a batch's life here (launch, pause, stop, shut down, end) is one state machine
over one row and its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Select

from core import money
from core.errors import AtelierError, InvalidInput, NotFound
from core.logging_setup import get_logger
from memory.ledger import BudgetExceeded
from memory.models import utcnow
from pipelines import provider_limits
from pipelines.contact_sheet import contact_sheet, tile_for
from tools import batch_quality
from tools.context import QuietPort, ToolContext, Turn

if TYPE_CHECKING:
    from memory.batches import BatchItemRecord, BatchRecord, BatchStore
    from memory.media_store import MediaStorage
    from tools.context import Services

log = get_logger(__name__)

UPDATE_EVERY_S = 0.5  # the watcher hears at most this often (and at the end)
STATUS_EVERY_S = 0.5  # how often a running batch re-reads its row (another process's pause)


@dataclass(frozen=True)
class BatchSpec:
    """How every item of a batch is made (stored as batches.spec); an item's own size
    and style win. Retries None: the runner's settings."""

    backend: str | None = None
    model: str | None = None
    size: str | None = None
    quality: str | None = None
    style: str | None = None
    qc_retries: int | None = None
    error_retries: int | None = None
    checks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("qc_retries", "error_retries"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 5:
                raise InvalidInput(f"{name.replace('_', ' ')} must be 0 to 5; {value} was asked.")
        object.__setattr__(self, "checks", tuple(batch_quality.validate(self.checks)))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "checks": list(self.checks)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> BatchSpec:
        """Lenient on read: a spec stored by an older version still loads."""
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in (data or {}).items() if k in known}
        values["checks"] = tuple(values.get("checks") or ())
        return cls(**values)

    def backend_spec(self) -> str | None:
        if self.model and self.backend and ":" not in self.backend:
            return f"{self.backend}:{self.model}"
        return self.backend


@dataclass(frozen=True)
class BatchSummary:
    """How a batch ended: for the chat's final message and `/batch status`."""

    done: int
    failed: list[tuple[str, str]]  # (label, why)
    cost_usd: Decimal
    elapsed_s: float
    contact_sheet_key: str | None
    status: str = "done"
    stop_reason: str | None = None
    not_run: int = 0  # items still pending (a stopped batch)
    contact_sheet: bytes | None = None  # the PNG, to show without reading it back

    def text(self) -> str:
        head = f"{self.done} done, {len(self.failed)} failed"
        if self.not_run:
            head += f", {self.not_run} not run"
        text = f"{head}; cost {money.usd(self.cost_usd, 4)}; {self.elapsed_s:.0f} s."
        if self.stop_reason:
            text += f" Stopped: {self.stop_reason}"
        return text


class BatchWatcher(Protocol):
    """What shows a running batch (the chat's progress message)."""

    async def update(
        self,
        batch: BatchRecord,
        counts: dict[str, int],
        running: list[BatchItemRecord],
        eta_s: float | None,
    ) -> None: ...

    async def finished(self, batch: BatchRecord, summary: BatchSummary) -> None: ...


class _ConfirmedPort(QuietPort):
    """Nobody watches an item, and the user confirmed the whole batch's estimate once."""

    async def confirm(self, question: str) -> bool:
        return True


@dataclass
class _Run:
    """One batch running in this process."""

    batch: BatchRecord
    ctx: ToolContext
    spec: BatchSpec
    watcher: BatchWatcher | None
    counts: dict[str, int]
    limit: int
    work: batch_quality.ItemWork
    running: dict[str, BatchItemRecord] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    halt: str | None = None  # paused | stopped | budget | fatal | shutdown | elsewhere
    stop_message: str | None = None  # why a budget or provider error stopped it
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    quiet: asyncio.Event = field(default_factory=asyncio.Event)  # paused, nothing in flight
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0
    told_at: float = 0.0
    checked_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None

    def move(self, old: str, new: str) -> None:
        self.counts[old] -= 1
        self.counts[new] += 1


class BatchRunner:
    """Runs this process's batches; one per process (Services.batches)."""

    def __init__(
        self,
        services: Services,
        store: BatchStore,
        *,
        instance_id: Callable[[], str | None],
        qc_retries: int = 2,
        error_retries: int = 2,
        media: MediaStorage | None = None,
        window: int = 2,
    ) -> None:
        self.services = services
        # Items under way per provider request slot: an item holds its place through
        # reserve, store and settle as well as its request, while the provider gate
        # (pipelines/provider_limits.py), not this, keeps requests to the limit; so
        # more items than slots keep the provider busy.
        self.window = max(1, window)
        # Conversations with a finished batch not yet told, as last read (refreshed on
        # every heartbeat, added to as batches end here): a turn elsewhere skips the
        # lookup (chat_app/batch_display.tell_finished).
        self.untold_threads: set[str] = set()
        self.store = store
        self.instance_id = instance_id
        self.qc_retries = qc_retries
        self.error_retries = error_retries
        self.media = media  # where contact sheets are kept; None: only shown
        self._runs: dict[str, _Run] = {}

    # ------------------------------------------------------------------ control

    async def start(
        self, ctx: ToolContext, batch: BatchRecord, watcher: BatchWatcher | None = None
    ) -> None:
        """Run `batch` in the background and return at once."""
        if batch.id in self._runs:
            return
        spec = BatchSpec.from_dict(batch.spec)
        backend, _ = ctx.services.backends.resolve(
            spec.backend_spec() or ctx.services.backends.default_id()
        )
        own = replace(ctx, turn=self._turn(batch), port=_ConfirmedPort())
        work = batch_quality.ItemWork(
            store=self.store,
            ctx=own,
            batch=batch,
            spec=spec,
            qc_retries=self.qc_retries if spec.qc_retries is None else spec.qc_retries,
            error_retries=self.error_retries if spec.error_retries is None else spec.error_retries,
            on_attempt=lambda item: self._attempted(batch.id, item),
        )
        run = _Run(
            batch=batch,
            ctx=own,
            spec=spec,
            watcher=watcher,
            counts=await self.store.counts(batch.id),
            limit=self.window * provider_limits.limit_for(backend.id),
            work=work,
            halt="paused" if batch.status == "paused" else None,
        )
        self._runs[batch.id] = run
        run.task = asyncio.create_task(self._drive(run), name=f"batch-{batch.id[:8]}")

    async def pause(self, batch_id: str, user_id: str) -> BatchRecord:
        """No new items start (those running finish); the row first, so another
        process running it sees the pause at its next look."""
        batch = await self.store.set_status(batch_id, user_id, "paused")
        run = self._runs.get(batch.id)
        if run is not None and run.halt is None:
            run.halt = "paused"
            run.batch = batch
            await self._tell(run, force=True)
        return batch

    async def resume(
        self, batch_id: str, user_id: str, watcher: BatchWatcher | None = None
    ) -> BatchRecord:
        batch = await self.store.set_status(batch_id, user_id, "running")
        run = self._runs.get(batch.id)
        if run is not None and not run.ended.is_set():
            run.halt, run.batch = None, batch
            run.watcher = watcher or run.watcher
            run.wake.set()
        elif batch.instance_id is not None and batch.instance_id == self.instance_id():
            await self.start(self._context(batch), batch, watcher)
        elif batch.instance_id is None and self.instance_id() is None:
            await self.start(self._context(batch), batch, watcher)  # one process, no registry
        # Otherwise its process (or, once released, the next adoption) runs it on.
        return batch

    async def stop(self, batch_id: str, user_id: str, reason: str | None = None) -> BatchRecord:
        """Stop for good: items running are cancelled (their reservations released) and
        marked failed "stopped"; items not started stay pending."""
        why = reason or "Stopped by you."
        batch = await self.store.set_status(batch_id, user_id, "stopped", reason=why)
        run = self._runs.get(batch.id)
        if run is not None:
            run.batch = batch
            self._halt(run, "stopped")
        return batch

    async def adopt(self, alive: Select[tuple[str]]) -> list[str]:
        """Take over the batches of processes not in `alive`; running ones continue."""
        mine = self.instance_id()
        if mine is None:
            raise RuntimeError("Adopting batches needs this process's id (AppInstances).")
        adopted = await self.store.adopt(alive, mine)
        for batch_id in adopted:
            batch = await self.store.get_any(batch_id)
            log.info("batch_adopted", batch=batch_id, status=batch.status)
            await self.start(self._context(batch), batch, None)  # a paused one waits here
        return adopted

    async def wait(self, batch_id: str) -> None:
        """Until the batch has ended here, or is paused with nothing in flight (tests)."""
        run = self._runs.get(batch_id)
        if run is None:
            return
        waits = [asyncio.create_task(run.ended.wait()), asyncio.create_task(run.quiet.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def shutdown(self) -> None:
        """Cancel every batch here; items running go back to pending for whoever adopts."""
        runs = list(self._runs.values())
        for run in runs:
            self._halt(run, "shutdown")
        for run in runs:
            await asyncio.gather(*run.tasks.values(), return_exceptions=True)
            if run.task is not None:
                run.task.cancel()
                await asyncio.gather(run.task, return_exceptions=True)
            await self.store.release(run.batch.id, instance_id=self.instance_id())

    def running(self) -> list[str]:
        return [batch_id for batch_id, run in self._runs.items() if not run.ended.is_set()]

    async def contact_sheet(self, batch_id: str, user_id: str) -> bytes:
        """The batch's contact sheet (the user's batch only), drawn from its items."""
        items = await self.store.items(batch_id, user_id)
        return await self._sheet(items, user_id)

    # ------------------------------------------------------------------ the batch

    def _turn(self, batch: BatchRecord) -> Turn:
        return Turn(
            user_id=batch.user_id,
            thread_id=batch.thread_id,
            message_id=batch.message_id,
            batch_id=batch.id,
        )

    def _context(self, batch: BatchRecord) -> ToolContext:
        return ToolContext(services=self.services, turn=self._turn(batch), port=_ConfirmedPort())

    def _halt(self, run: _Run, why: str) -> None:
        if run.halt in ("stopped", "shutdown"):
            return
        run.halt = why
        if why in ("stopped", "shutdown"):
            for task in run.tasks.values():
                task.cancel()
        run.wake.set()

    async def _drive(self, run: _Run) -> None:
        try:
            while True:
                run.wake.clear()
                await self._look(run)
                while run.halt is None and len(run.tasks) < run.limit:
                    item = await self.store.next_pending(run.batch.id)
                    if item is None:
                        break
                    self._launch(run, item)
                if not run.tasks and run.halt != "paused":
                    break
                if not run.tasks and not run.quiet.is_set():  # paused, and drained
                    run.quiet.set()
                    await self._tell(run, force=True)
                elif run.halt != "paused":
                    run.quiet.clear()
                # A paused batch stays here, reading its row, until resumed or stopped.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run.wake.wait(), STATUS_EVERY_S)
            await self._end(run)
        except Exception:
            log.exception("batch_failed", batch=run.batch.id)
        finally:
            self._runs.pop(run.batch.id, None)
            run.ended.set()

    async def _look(self, run: _Run) -> None:
        """Every STATUS_EVERY_S, re-read the row: another process may have paused,
        resumed or stopped this batch, or adopted it while this one stalled."""
        now = time.monotonic()
        if now - run.checked_at < STATUS_EVERY_S or run.halt in ("stopped", "shutdown"):
            return
        run.checked_at = now
        batch = await self.store.get(run.batch.id, run.batch.user_id)
        run.batch = batch
        mine = self.instance_id()
        if batch.status == "stopped":
            self._halt(run, "stopped")
        elif batch.status == "done" or (mine and batch.instance_id not in (None, mine)):
            self._halt(run, "elsewhere")
        elif batch.status == "paused" and run.halt is None:
            run.halt = "paused"
        elif batch.status == "running" and run.halt == "paused":
            run.halt = None

    def watch(self, batch_id: str, watcher: BatchWatcher) -> bool:
        """Show a batch this process runs, and nobody watches, in a page opened on it
        (one adopted after a restart): its progress goes there from now on. A batch
        already watched keeps its watcher (which mirrors to the user's other pages)."""
        run = self._runs.get(batch_id)
        if run is None or run.watcher is not None:
            return False
        run.watcher = watcher
        return True

    async def refresh_untold(self, alive: object = None) -> None:
        """Re-read which conversations have a finished batch not yet told (a heartbeat
        sweep: `alive` is not needed)."""
        self.untold_threads = await self.store.untold_threads()

    def _attempted(self, batch_id: str, item: BatchItemRecord) -> None:
        """An attempt ended: the running item's copy carries it (the view's "retrying")."""
        run = self._runs.get(batch_id)
        if run is not None and item.id in run.running:
            run.running[item.id] = item

    def _launch(self, run: _Run, item: BatchItemRecord) -> None:
        run.move("pending", "running")
        run.running[item.id] = item
        task = asyncio.create_task(self._item(run, item), name=f"batch-item-{item.position}")
        run.tasks[item.id] = task

    async def _item(self, run: _Run, item: BatchItemRecord) -> None:
        """One item to its end; whatever happens, its row and the counts say so."""
        status = "failed"
        try:
            status = await run.work.run(item)
        except asyncio.CancelledError:
            if run.halt == "shutdown":
                # Its reservation stays named: should its images have been stored just
                # before, whoever runs it next settles them instead of paying again.
                status = "pending"
                await self.store.update_item(item.id, status=status)
            else:
                status = "failed"
                await self.store.update_item(item.id, status=status, error="stopped")
        except (BudgetExceeded, *batch_quality.FATAL_ERRORS) as exc:
            # Every item would meet it: none starts any more, this one runs again later.
            status = "pending"
            if run.halt not in ("budget", "fatal"):
                run.stop_message = exc.message
                self._halt(run, "budget" if isinstance(exc, BudgetExceeded) else "fatal")
            await self.store.update_item(item.id, status="pending", reservation_id=None)
        except Exception as exc:
            log.exception("batch_item_failed", batch=run.batch.id, position=item.position)
            why = exc.message if isinstance(exc, AtelierError) else type(exc).__name__
            await self.store.update_item(item.id, status="failed", error=f"Internal error: {why}")
        finally:
            run.move("running", status)
            run.running.pop(item.id, None)
            run.tasks.pop(item.id, None)
            run.finished_here += status in ("done", "failed")
            run.wake.set()
            await self._tell(run)

    # ------------------------------------------------------------------ the end

    async def _end(self, run: _Run) -> None:
        if run.halt in ("shutdown", "elsewhere"):
            return
        batch_id, user_id = run.batch.id, run.batch.user_id
        if run.halt in ("budget", "fatal"):
            what = "Budget reached" if run.halt == "budget" else "Stopped"
            reason = (
                f"{what} after {run.counts['done']} of {run.batch.item_count} items: "
                f"{run.stop_message}"
            )
            run.batch = await self._set_final(run, "stopped", reason)
        elif run.halt is None:
            run.batch = await self._set_final(run, "done", None)
        self.untold_threads.add(run.batch.thread_id)
        items = await self.store.items(batch_id, user_id)
        sheet = await self._sheet(items, user_id) if items else None
        key = await asyncio.to_thread(self.media.put, sheet) if sheet and self.media else None
        finished = run.batch.finished_at or utcnow()
        summary = BatchSummary(
            done=sum(i.status == "done" for i in items),
            failed=[(i.label, i.error or "failed") for i in items if i.status == "failed"],
            cost_usd=sum((i.cost_usd for i in items), Decimal(0)),
            elapsed_s=(finished - run.batch.created_at).total_seconds(),
            contact_sheet_key=key,
            status=run.batch.status,
            stop_reason=run.batch.stop_reason,
            not_run=sum(i.status == "pending" for i in items),
            contact_sheet=sheet,
        )
        log.info("batch_ended", batch=batch_id, status=summary.status, done=summary.done)
        if run.watcher is not None:
            try:
                await run.watcher.finished(run.batch, summary)
            except Exception:
                log.warning("batch_display_failed", exc_info=True)

    async def _set_final(self, run: _Run, status: str, reason: str | None) -> BatchRecord:
        try:
            return await self.store.set_status(
                run.batch.id, run.batch.user_id, status, reason=reason
            )
        except InvalidInput:  # stopped meanwhile (here or by another process)
            return await self.store.get(run.batch.id, run.batch.user_id)

    async def _sheet(self, items: list[BatchItemRecord], user_id: str) -> bytes:
        images = self.services.images
        tiles: list[tuple[bytes | None, str, bool]] = []
        for item in items:
            data = None
            if item.image_ids:
                # Deleted since (the gallery's Delete), or its file gone: an empty tile.
                with contextlib.suppress(NotFound):
                    record = await images.get(item.image_ids[0], user_id)
                    data = await asyncio.to_thread(images.read, record)
            label = item.label if item.status != "pending" else f"(not run) {item.label}"
            tiles.append((data, label, item.status == "done"))
        return await asyncio.to_thread(contact_sheet, tiles, tile=tile_for(len(tiles)))

    async def _tell(self, run: _Run, *, force: bool = False) -> None:
        now = time.monotonic()
        if run.watcher is None or (not force and now - run.told_at < UPDATE_EVERY_S):
            return
        run.told_at = now
        left = run.counts["pending"] + run.counts["running"]
        rate = run.finished_here / max(1e-6, now - run.started)
        eta = left / rate if run.finished_here and run.halt is None else None
        running = sorted(run.running.values(), key=lambda i: i.position)
        try:
            await run.watcher.update(run.batch, dict(run.counts), running, eta)
        except Exception:
            log.warning("batch_display_failed", exc_info=True)
