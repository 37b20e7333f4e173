"""Blocking jobs (a diffusers pipeline call) run off the event loop, one per device.

A GPU runs one pipeline at a time well; two at once only share its memory and time,
and can run out of memory. So jobs are queued per device key ("cuda:0", "cpu") and run
first come, first served in a worker thread owned by that device, while jobs for other
devices run beside them. The event loop only waits on a future, so the chat stays
responsive while a job runs.

A waiting job is told its place ("waiting: 2 ahead") through its `Progress`, again each
time the queue moves. If the task awaiting a job is cancelled (the user pressed stop):

- a job still waiting is dropped and never runs;
- a running job is asked to stop (`progress.cancel()`); the queue waits for it to
  return before starting the next one (a pipeline cannot be killed halfway, and the
  device is not free until it returns), then `CancelledError` propagates.

A job that notices `progress.cancelled` itself should raise `JobCancelled`; the caller
then gets `asyncio.CancelledError`, as if its task had been cancelled.

Swapping in external GPU workers: callers depend only on `JobRunner`. A runner for
worker processes or machines would implement the same `run`, send the job to a worker
serving `device_key`, forward the worker's progress messages into `progress.report`, and
send a cancel message when the awaiting task is cancelled (or `progress.cancel_event` is
set). The job then has to cross a process boundary, so such a runner needs `fn` to be
picklable: a module-level function bound to plain data (`functools.partial(run, spec)`)
that finds its pipeline in the worker's own `PipelineCache`, rather than a closure over
this process's cache.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from pipelines.progress import Progress

T = TypeVar("T")


class JobCancelled(Exception):
    """Raised by a job that stopped early because `progress.cancelled` was set."""


class JobRunner(Protocol):
    """Runs a blocking job for a device and returns its result, or raises its error."""

    async def run(self, device_key: str, fn: Callable[[Progress], T], progress: Progress) -> T: ...


@dataclass(eq=False)
class _Ticket:
    progress: Progress
    turn: asyncio.Event = field(default_factory=asyncio.Event)


class _Lane:
    """The queue and the worker thread of one device."""

    def __init__(self, device_key: str) -> None:
        self.tickets: deque[_Ticket] = deque()  # tickets[0] holds the device
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"atelier-{device_key}"
        )

    def join(self, progress: Progress) -> _Ticket:
        ticket = _Ticket(progress)
        self.tickets.append(ticket)
        if len(self.tickets) == 1:
            ticket.turn.set()
        else:
            self._tell(ticket, len(self.tickets) - 1)
        return ticket

    def leave(self, ticket: _Ticket) -> None:
        """Drop a ticket (finished or abandoned) and let the queue move on."""
        was_head = bool(self.tickets) and self.tickets[0] is ticket
        self.tickets.remove(ticket)
        if was_head and self.tickets:
            self.tickets[0].turn.set()
        for ahead, waiting in enumerate(list(self.tickets)[1:], start=1):
            self._tell(waiting, ahead)

    @staticmethod
    def _tell(ticket: _Ticket, ahead: int) -> None:
        ticket.progress.report(0, 0, f"waiting: {ahead} ahead")


class JobQueue:
    """The in-process `JobRunner`: one worker thread and one FIFO queue per device.

    Use it from one event loop; the queue's bookkeeping happens on that loop's thread.
    """

    def __init__(self) -> None:
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    def _lane(self, device_key: str) -> _Lane:
        with self._lock:
            if device_key not in self._lanes:
                self._lanes[device_key] = _Lane(device_key)
            return self._lanes[device_key]

    def waiting(self, device_key: str) -> int:
        """Jobs queued or running for a device (for status displays and tests)."""
        lane = self._lanes.get(device_key)
        return len(lane.tickets) if lane else 0

    async def run(self, device_key: str, fn: Callable[[Progress], T], progress: Progress) -> T:
        lane = self._lane(device_key)
        ticket = lane.join(progress)
        try:
            await ticket.turn.wait()
        except asyncio.CancelledError:
            lane.leave(ticket)
            raise
        try:
            if progress.cancelled:
                raise asyncio.CancelledError("cancelled before it started")
            future = asyncio.get_running_loop().run_in_executor(lane.executor, fn, progress)
            return await _await_job(future, progress)
        finally:
            lane.leave(ticket)

    def shutdown(self) -> None:
        """Let the worker threads end once their current jobs return (tests, orderly exit)."""
        with self._lock:
            lanes, self._lanes = list(self._lanes.values()), {}
        for lane in lanes:
            lane.executor.shutdown(wait=False, cancel_futures=True)


async def _await_job(future: asyncio.Future[T], progress: Progress) -> T:
    """The job's result; on cancellation, ask it to stop and wait until it has."""
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:
        progress.cancel()
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue  # cancelled again while waiting: keep waiting for the device
            except BaseException:
                break  # the job's own error is moot once it was cancelled
        if future.done() and not future.cancelled():
            future.exception()  # retrieved, so asyncio does not log it as unhandled
        raise
    except JobCancelled as exc:
        raise asyncio.CancelledError(str(exc) or "stopped by the user") from exc
    return result
