"""The `JobRunner` for worker processes: a job goes on the board and a worker runs it.

`run` has the in-process `JobQueue`'s contract (see pipelines/job_queue.py): the caller
awaits the result, sees progress, previews and its place in the queue through its
`Progress`, and a cancelled task stops the job (a waiting one at once, a running one
cooperatively, waited for up to 30 s) before `CancelledError` propagates. What differs
is where the job runs and who plans the device: `plans_on_worker` tells the backends not
to import torch to plan one here; the plan the worker used comes back with the result
(`last_run()`), so the backend records the worker's real device and number format.

While it awaits a job the runner renews the job's waiter lease (`JobBoard.renew`, every
quarter of `lease_s`): if this process dies, the lease lapses and any live app process's
dispatch pass stops the job, so no worker computes a result nobody will store.

Whose job it is comes from the structlog context (`user_id`, bound per chat turn), so
the board can take turns between users. A worker's error comes back as the original
exception when it is one of ours (InvalidInput, ContentRefused, ...), otherwise as an
AtelierError that names the worker and says what went wrong there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.exceptions import RedisError

from core.errors import AtelierError
from core.logging_setup import get_logger
from pipelines.devices import DevicePlan
from pipelines.progress import Preview, Progress
from pipelines.remote import job_codec

log = get_logger(__name__)
T = TypeVar("T")

CANCEL_WAIT_S = 30.0
CANCEL_POLL_S = 0.2
FINAL_STATES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class WorkerRun:
    """Where a finished job ran: the worker and the plan it chose."""

    worker: str
    plan: DevicePlan


_last_run: contextvars.ContextVar[WorkerRun | None] = contextvars.ContextVar(
    "atelier_last_worker_run", default=None
)


def last_run() -> WorkerRun | None:
    """The worker run of the last job this task awaited through a CeleryJobRunner."""
    return _last_run.get()


class CeleryJobRunner:
    """Runs device jobs on `atelier worker` processes through the job board."""

    plans_on_worker = True

    def __init__(self, board: Any, *, close: Callable[[], Awaitable[None]] | None = None) -> None:
        self.board = board
        self._close = close

    async def aclose(self) -> None:
        """Close the board's Redis connections (when this runner made them)."""
        if self._close is not None:
            await self._close()

    async def run(self, device_key: str, fn: Callable[[Progress], T], progress: Progress) -> T:
        assert isinstance(fn, functools.partial), "a worker job is a partial of a job function"
        owner = str(structlog.contextvars.get_contextvars().get("user_id") or "anonymous")
        job_id = await self.board.enqueue(
            owner=owner,
            kind=job_codec.job_kind(fn),
            model=job_codec.job_model(fn),
            payload=job_codec.dumps_job(fn, watched=progress.watched),
            awaited=True,
        )
        log.info("remote_job_enqueued", job_id=job_id, kind=job_codec.job_kind(fn))
        helpers = [
            asyncio.create_task(self._cancel_when_stopped(job_id, progress)),
            asyncio.create_task(self._keep_lease(job_id)),
        ]
        try:
            await self._follow(job_id, progress)
        except asyncio.CancelledError:
            await self._cancel_and_wait(job_id)
            raise
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return await self._outcome(job_id)

    async def _follow(self, job_id: str, progress: Progress) -> None:
        async for event in self.board.events(job_id):
            _forward(event, progress)
            if event.get("type") == "state" and event.get("state") in FINAL_STATES:
                return

    async def _cancel_when_stopped(self, job_id: str, progress: Progress) -> None:
        """A stop through `progress.cancel()` (not a task cancel) reaches the worker too."""
        # progress.cancelled is a threading.Event: it can only be polled from here.
        while not progress.cancelled:  # noqa: ASYNC110
            await asyncio.sleep(CANCEL_POLL_S)
        await self.board.cancel(job_id)

    async def _keep_lease(self, job_id: str) -> None:
        """Renew the job's waiter lease until cancelled; Redis errors only delay a renewal
        (the lease outlives three missed ones)."""
        every = self.board.lease_s / 4
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.board.renew(job_id):
                    log.info("remote_job_lease_ended", job_id=job_id)
                    return
            except (RedisError, OSError) as exc:
                log.warning("remote_job_lease_renew_failed", job_id=job_id, error=repr(exc))

    async def _cancel_and_wait(self, job_id: str) -> None:
        """Cancel, then wait until the worker has let go of the device (≤ 30 s)."""
        try:
            state = await asyncio.shield(self.board.cancel(job_id))
            if state not in FINAL_STATES:
                await asyncio.wait_for(self._until_final(job_id), CANCEL_WAIT_S)
        except (TimeoutError, asyncio.CancelledError):
            log.warning("remote_cancel_not_confirmed", job_id=job_id)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.board.forget(job_id))

    async def _until_final(self, job_id: str) -> None:
        async for event in self.board.events(job_id):
            if event.get("type") == "state" and event.get("state") in FINAL_STATES:
                return

    async def _outcome(self, job_id: str) -> Any:
        state, result, error, message = await self.board.result(job_id)
        status = await self.board.status(job_id)
        worker = (status.worker if status else None) or "a worker"
        await self.board.forget(job_id)
        if state == "succeeded" and result is not None:
            done = job_codec.loads_result(result)
            _last_run.set(WorkerRun(done["worker"], DevicePlan(done["device"], done["dtype"])))
            return done["value"]
        if state == "cancelled":
            raise asyncio.CancelledError(message or "stopped by the user")
        raise _error(error, message, worker)


def _error(error: bytes | None, message: str | None, worker: str) -> BaseException:
    if error is not None:
        try:
            exc = job_codec.loads(error)
        except Exception:
            exc = None
        if isinstance(exc, Exception):
            return exc
    reason = message or "it gave no reason"
    return AtelierError(f"The job failed on worker {worker}: {reason}")


def _forward(event: dict[str, Any], progress: Progress) -> None:
    kind = event.get("type")
    if kind == "position":
        progress.report(0, 0, f"waiting: {event.get('ahead', 0)} ahead")
    elif kind == "progress":
        progress.report(int(event["done"]), int(event["total"]), str(event.get("note", "")))
    elif kind == "preview":
        data = base64.b64decode(event["data"])
        progress.show(Preview(data, event["mime"], int(event["width"]), int(event["height"])))
    elif kind == "record" and hasattr(progress, "record"):
        value = event["value"]
        if event.get("kind") == "sample":
            from pathlib import Path

            value = Path(value)
        progress.record(str(event["kind"]), int(event["step"]), value)
    elif kind == "retry":
        progress.report(
            0, 0, f"the worker running this stopped; retrying (attempt {event.get('attempt')})"
        )
