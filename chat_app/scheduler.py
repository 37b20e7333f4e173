"""The scheduler: starts each schedule's run when it falls due, once, whoever else is up.

Every app process sharing the database runs one `Scheduler`. Every `poll_s` it reads
the active schedules whose `next_run_at` has passed, applies the missed-run policy
(tools/schedule_times.due_action: a due time more than the grace late was missed while
the app was down, and runs once now or is skipped), and claims the due time with one
compare-and-set on `next_run_at` (memory/schedules.py). Only the process whose claim
wins creates the run's batch and starts it, so two processes fire a due time once.

A run is a batch in the schedule's own conversation, with no watcher: nobody is
watching, and the user confirmed every run when creating the schedule, so its paid
actions are confirmed (the ledger still holds them to the schedule's budget, which is
its conversation's budget, and to the user's day). Its images carry the batch id, so
the gallery shows them under the schedule.

A crash between the claim and the batch's creation loses that one run (it is never run
twice); a crash after it leaves a running batch that the next start-up adopts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import AtelierError
from core.logging_setup import get_logger
from memory.models import utcnow
from tools import schedule_times
from tools.context import QuietPort, Services, ToolContext, Turn
from tools.schedule_runs import local_time, plan_run, run_prompt, when_of

if TYPE_CHECKING:
    from memory.batches import BatchRecord, BatchStore
    from memory.schedules import ScheduleRecord, ScheduleStore
    from tools.batch_runner import BatchRunner

log = get_logger(__name__)

DEFAULT_POLL_S = 30.0
LABEL_MAX = 300
TITLE_MAX = 200


class _ConfirmedPort(QuietPort):
    """A schedule's run: nobody watches, and the user said yes to every run when the
    schedule was created (with its per-run estimate)."""

    async def confirm(self, question: str) -> bool:
        return True


class Scheduler:
    def __init__(
        self,
        store: ScheduleStore,
        runner: BatchRunner,
        batches: BatchStore,
        services: Services,
        *,
        poll_s: float = DEFAULT_POLL_S,
        missed_policy: schedule_times.MissedPolicy = "run_once",
        instance_id: Callable[[], str | None] = lambda: None,
        qc_retries: int = 2,
        error_retries: int = 2,
    ) -> None:
        self.store = store
        self.runner = runner
        self.batches = batches
        self.services = services
        self.poll_s = poll_s
        self.missed_policy = missed_policy
        self.instance_id = instance_id  # this process (app_instances.id), once registered
        self.qc_retries = qc_retries
        self.error_retries = error_retries
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        """Tick every `poll_s` until cancelled; a failed tick is logged and tried again."""
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler_tick_failed")
            await asyncio.sleep(self.poll_s)

    async def tick(self, now: datetime | None = None) -> list[BatchRecord]:
        """Start every run due at `now` that this process wins; returns their batches."""
        now = now or utcnow()
        started = []
        for schedule in await self.store.due(now):
            batch = await self._fire(schedule, now)
            if batch is not None:
                started.append(batch)
        return started

    async def _fire(self, schedule: ScheduleRecord, now: datetime) -> BatchRecord | None:
        policy = schedule.missed_policy or self.missed_policy
        fire, next_run = schedule_times.due_action(
            schedule.next_run_at, now, policy, when_of(schedule)
        )
        claimed = await self.store.claim(
            schedule.id,
            due_at=schedule.next_run_at,
            next_run_at=next_run,
            now=now,
            advance_theme=fire,
        )
        if claimed is None:  # another process took this due time
            return None
        if not fire:
            log.info("schedule_run_skipped", schedule=schedule.id, due=str(schedule.next_run_at))
            return None
        try:
            return await self._start_run(claimed, now)
        except AtelierError as exc:
            # Nothing ran or was spent; the next due time is already set.
            log.warning("schedule_run_refused", schedule=schedule.id, reason=exc.message)
            return None

    async def _start_run(self, schedule: ScheduleRecord, now: datetime) -> BatchRecord:
        from memory.batches import NewBatchItem

        ctx = ToolContext(
            self.services,
            Turn(user_id=schedule.user_id, thread_id=schedule.thread_id),
            port=_ConfirmedPort(),
        )
        prompt = run_prompt(schedule.prompt, list(schedule.themes), schedule.theme_index)
        plan = plan_run(ctx, prompt, schedule.count, schedule.backend, schedule.size)
        sent = prompt
        if schedule.style:
            sent = self.services.styles.get(schedule.style).apply(prompt)
        label = _theme(schedule) or prompt
        items = [
            NewBatchItem(
                label=label[:LABEL_MAX],
                prompt_sent=sent,
                style=schedule.style,
                size=schedule.size,
                count=1,
            )
            for _ in range(schedule.count)
        ]
        title = f"{schedule.name} — run of {local_time(now, schedule.timezone)}"
        batch = await self.batches.create(
            user_id=schedule.user_id,
            thread_id=schedule.thread_id,
            title=title[:TITLE_MAX],
            spec=self._spec(schedule, plan.backend),
            items=items,
            estimate_usd=plan.estimate.usd,
            instance_id=self.instance_id(),
            schedule_id=schedule.id,
        )
        await self.store.set_last_batch(schedule.id, batch.id)
        await self.runner.start(ctx, batch, None)
        log.info("schedule_run_started", schedule=schedule.id, batch=batch.id, items=len(items))
        return batch

    def _spec(self, schedule: ScheduleRecord, backend: str) -> dict[str, Any]:
        """How every item of the run is made (tools/batch_runner.BatchSpec, as stored)."""
        from tools.batch_quality import checks_for
        from tools.batch_runner import BatchSpec

        style = self.services.styles.get(schedule.style) if schedule.style else None
        return BatchSpec(
            backend=backend,
            size=schedule.size,
            style=schedule.style,
            qc_retries=self.qc_retries,
            error_retries=self.error_retries,
            checks=tuple(checks_for(style)),
        ).to_dict()


def _theme(schedule: ScheduleRecord) -> str | None:
    themes = list(schedule.themes)
    return themes[schedule.theme_index % len(themes)] if themes else None
