"""App processes and the work they own: a heartbeat per process, and what a crash left.

Several app processes may share one database. Each registers a row in `app_instances`
when it starts and refreshes its heartbeat every `interval` while it runs; each ledger
reservation names the process that made it. A process is dead when

- its heartbeat is older than `missed` intervals (3 × 10 s by default), or its row is
  gone (it stopped, or another process found it dead), or
- it ran on this machine (same kernel boot and process namespace) and its pid is no
  longer running (or is a zombie): a kill -9 followed by a restart is seen at once,
  without waiting for the heartbeat to age.

A dead process's open reservations are released at once (they count as nothing spent,
as a failed request does) and marked interrupted, so the user can be told. This runs at
start-up and after every heartbeat, so a process that dies while others run is also
cleaned up. A live process's reservations are never touched: the release re-reads who
is alive in the same statement. The ids that a pid check found dead are dead for good,
so they can be named; only the heartbeat rule depends on the time the statement sees.

Clocks: heartbeats are written and compared with each process's own UTC clock, so the
hosts sharing a database must agree to well within `missed` × `interval`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Select, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.logging_setup import get_logger
from memory.db import write_transaction
from memory.images import ImageRecord
from memory.ledger import Ledger, Reservation
from memory.models import AppInstance, CurationCandidate, Image, Step, new_id, utcnow

log = get_logger(__name__)

HEARTBEAT_INTERVAL = timedelta(seconds=10)
MISSED_BEATS = 3  # no heartbeat for this many intervals: the process is dead


def this_machine() -> str | None:
    """The kernel boot and pid namespace this process runs in, or None where unknown.

    Two processes can compare pids only when these match: containers on one kernel
    each have their own pid namespace, and may even share a hostname.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot}/{namespace}"[:128]


def pid_running(pid: int) -> bool:
    """Whether `pid` runs on this machine (a zombie, killed but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: leave it to the heartbeat
    state = stat.rpartition(")")[2].split()[:1]
    return state not in (["Z"], ["X"])


class AppInstances:
    """This process's heartbeat row, and the release of dead processes' reservations."""

    def __init__(
        self,
        engine: AsyncEngine,
        ledger: Ledger,
        *,
        interval: timedelta = HEARTBEAT_INTERVAL,
        missed: int = MISSED_BEATS,
        instance_id: str | None = None,
        machine: str | None = None,
        pid: int | None = None,
    ) -> None:
        self._engine = engine
        self._ledger = ledger
        self.interval = interval
        self.missed = missed
        self.id = instance_id or new_id()
        self.machine = machine if machine is not None else this_machine()
        self.pid = pid if pid is not None else os.getpid()
        # Conversations with interrupted work not yet told, as last read: a turn looks
        # up its notices only when its conversation is here (refreshed every beat).
        self.untold_threads: set[str] = set()
        # Other work that names its process (trainings), released like reservations on
        # every beat: each is given the select of live process ids.
        self.sweeps: list[Callable[[Select[tuple[str]]], Awaitable[object]]] = []

    @property
    def dead_after(self) -> timedelta:
        return self.interval * self.missed

    async def register(self, now: datetime | None = None) -> None:
        """Add this process's row; its ledger's reservations are its own from now on."""
        when = now or utcnow()
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                insert(AppInstance).values(
                    id=self.id,
                    started_at=when,
                    heartbeat_at=when,
                    host=socket.gethostname()[:255],
                    pid=self.pid,
                    machine=self.machine,
                )
            )
        self._ledger.instance_id = self.id

    async def beat(self, now: datetime | None = None) -> None:
        """Refresh the heartbeat; a row another process removed (it took this one for
        dead after a long stall) is added again."""
        when = now or utcnow()
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(AppInstance).where(AppInstance.id == self.id).values(heartbeat_at=when)
            )
        if result.rowcount != 1:
            log.warning("instance_revived", instance=self.id)
            await self.register(when)

    async def alive(self, now: datetime | None = None) -> Select[tuple[str]]:
        """A select of the ids of live processes (this one included), for work that
        names its process: whatever names an id outside it belongs to a dead process.

        Evaluate it inside the statement that acts on the dead processes' work, so a
        process that registers after this call counts as alive there.
        """
        alive, _ = await self._alive_and_gone(now or utcnow())
        return alive

    async def _alive_and_gone(self, when: datetime) -> tuple[Select[tuple[str]], list[str]]:
        """The live processes' ids (a select), and the ids a pid check found dead."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(AppInstance))).all()
        gone = [
            row.id
            for row in rows
            if row.id != self.id
            and self.machine is not None
            and row.machine == self.machine
            and (row.pid == self.pid or not pid_running(row.pid))
        ]
        alive = select(AppInstance.id).where(
            or_(AppInstance.heartbeat_at >= when - self.dead_after, AppInstance.id == self.id),
            AppInstance.id.not_in(gone),
        )
        return alive, gone

    async def release_dead(self, now: datetime | None = None) -> int:
        """Release the open reservations of every dead process; forget dead processes.

        Returns how many reservations were released.
        """
        when = now or utcnow()
        cutoff = when - self.dead_after
        alive, gone = await self._alive_and_gone(when)
        released = await self._ledger.release_abandoned(alive, now=when)
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                delete(AppInstance).where(
                    AppInstance.id != self.id,
                    or_(AppInstance.heartbeat_at < cutoff, AppInstance.id.in_(gone)),
                )
            )
        if released:
            log.warning("reservations_of_dead_processes_released", count=released)
        return released

    async def refresh_untold(self) -> None:
        self.untold_threads = await self._ledger.untold_threads()

    async def run(self) -> None:
        """Beat, release what dead processes held, and note untold conversations, every
        interval until cancelled. A failed round is logged and tried again next time."""
        while True:
            await asyncio.sleep(self.interval.total_seconds())
            try:
                await self.one_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat_failed", instance=self.id)

    async def one_round(self) -> None:
        """One beat: refresh this process's row, release what dead processes held (their
        reservations, then each sweep's work), note untold conversations."""
        await self.beat()
        await self.release_dead()
        if self.sweeps:
            alive = await self.alive()
            for sweep in self.sweeps:
                await sweep(alive)
        await self.refresh_untold()

    async def unregister(self) -> None:
        """The process stops: its row goes, so the next start-up (or any live process)
        releases whatever it still held without waiting for the heartbeat to age."""
        async with write_transaction(self._engine) as conn:
            await conn.execute(delete(AppInstance).where(AppInstance.id == self.id))
        self._ledger.instance_id = None


async def images_left_by(engine: AsyncEngine, entry: Reservation) -> list[ImageRecord]:
    """Images an interrupted action had stored and that no curation ranks, oldest first.

    They were stored under the user's message before the process died; for a curation,
    only its candidates (lineage operation "curation candidate").
    """
    if entry.message_id is None:
        return []
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Image)
                .where(
                    Image.thread_id == entry.thread_id,
                    Image.user_id == entry.user_id,
                    Image.message_id == entry.message_id,
                    Image.created_at >= entry.created_at,
                    Image.id.not_in(select(CurationCandidate.image_id)),
                )
                .order_by(Image.created_at)
            )
        ).all()
    records = [ImageRecord.from_row(row) for row in rows]
    if entry.what == "curation":
        records = [r for r in records if _operation(r) == "curation candidate"]
    return records


def _operation(record: ImageRecord) -> str | None:
    lineage = record.parameters.get("lineage")
    return lineage.get("operation") if isinstance(lineage, dict) else None


async def message_text(engine: AsyncEngine, entry: Reservation) -> str | None:
    """What the user wrote in the message whose action was interrupted, if stored.

    The entry names the step that made the action (a tool's, or the message itself);
    the message is the user's last one written before that step.
    """
    if entry.message_id is None:
        return None
    made_at = (
        select(Step.position)
        .where(Step.id == entry.message_id, Step.thread_id == entry.thread_id)
        .scalar_subquery()
    )
    async with engine.connect() as conn:
        return await conn.scalar(
            select(Step.output)
            .where(
                Step.thread_id == entry.thread_id,
                Step.type == "user_message",
                Step.position <= made_at,
            )
            .order_by(Step.position.desc())
            .limit(1)
        )
