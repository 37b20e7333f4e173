"""The LoRA registry: trained LoRAs and the trainings that make them, one row each.

Scoped to the user like image lineage: another user's LoRA is simply "not found", and a
name is taken only among the user's own LoRAs (compared without case, as on disk).
Progress writes (`progress`) are small and frequent; they never move a row out of a
final state, so a late write from a job that was just stopped cannot undo the stop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import InvalidInput, NotFound
from memory.db import for_reads, session_factory, write_session
from memory.ids import require_uuid
from memory.models import LoraModel, new_id, utcnow
from memory.row_columns import row_columns

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled", "interrupted")


@dataclass(frozen=True)
class LoraRecord:
    id: str
    user_id: str
    thread_id: str | None
    message_id: str | None
    name: str
    backend: str
    base_model: str
    trigger_word: str
    replicate_version: str | None
    files: dict[str, Any]
    dataset: dict[str, Any]
    parameters: dict[str, Any]
    metrics: dict[str, Any]
    status: str
    step: int
    total_steps: int
    losses: list[list[float]]
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> LoraRecord:
        """From a `LoraModel`, or a row of its `row_columns`."""
        return cls(
            id=row.id,
            user_id=row.user_id,
            thread_id=row.thread_id,
            message_id=row.message_id,
            name=row.name,
            backend=row.backend,
            base_model=row.base_model,
            trigger_word=row.trigger_word,
            replicate_version=row.replicate_version,
            files=dict(row.files or {}),
            dataset=dict(row.dataset or {}),
            parameters=dict(row.parameters or {}),
            metrics=dict(row.metrics or {}),
            status=row.status,
            step=row.step,
            total_steps=row.total_steps,
            losses=list(row.losses or []),
            error=row.error,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )


@dataclass(frozen=True)
class NewLora:
    name: str
    backend: str
    base_model: str
    trigger_word: str
    total_steps: int
    dataset: dict[str, Any]
    parameters: dict[str, Any]
    thread_id: str | None = None
    instance_id: str | None = None  # the app process that runs it (app_instances.id)


class LoraStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = for_reads(engine)
        self._sessions = session_factory(engine)

    async def create(self, user_id: str, new: NewLora) -> LoraRecord:
        """A queued row for a training the user confirmed; refuses a name already used."""
        if await self.find(user_id, new.name) is not None:
            raise InvalidInput(_taken(new.name))
        row = LoraModel(
            id=new_id(),
            user_id=user_id,
            thread_id=require_uuid(new.thread_id, "thread id") if new.thread_id else None,
            name=new.name,
            backend=new.backend,
            base_model=new.base_model,
            trigger_word=new.trigger_word,
            dataset=new.dataset,
            parameters=new.parameters,
            files={},
            metrics={},
            losses=[],
            status="queued",
            step=0,
            total_steps=new.total_steps,
            created_at=utcnow(),
            instance_id=new.instance_id,
        )
        try:
            async with write_session(self._sessions) as session:
                session.add(row)
        except IntegrityError:
            raise InvalidInput(_taken(new.name)) from None  # a concurrent create won
        return LoraRecord.from_row(row)

    async def find(self, user_id: str, name: str) -> LoraRecord | None:
        """The user's LoRA called `name` (any case), or None."""
        async with self._sessions() as session:
            row = await session.scalar(
                select(LoraModel).where(
                    LoraModel.user_id == user_id, func.lower(LoraModel.name) == name.lower()
                )
            )
        return LoraRecord.from_row(row) if row else None

    async def get(self, user_id: str, name: str) -> LoraRecord:
        found = await self.find(user_id, name)
        if found is None:
            raise NotFound(f"You have no LoRA called {name!r}. `/loras` lists yours.")
        return found

    async def by_id(self, lora_id: str, user_id: str) -> LoraRecord:
        lora_id = require_uuid(lora_id, "LoRA id")
        async with self._sessions() as session:
            row = await session.scalar(
                select(LoraModel).where(LoraModel.id == lora_id, LoraModel.user_id == user_id)
            )
        if row is None:
            raise NotFound("No such LoRA.")
        return LoraRecord.from_row(row)

    async def for_user(self, user_id: str, *, status: str | None = None) -> list[LoraRecord]:
        """The user's LoRAs, newest first."""
        params = {"user_id": user_id, "status": status}
        async with self._reads.connect() as conn:  # read on every agent turn: no ORM
            rows = (await conn.execute(_for_user_query(status is not None), params)).all()
        return [LoraRecord.from_row(row) for row in rows]

    async def names_in_use(self) -> set[str]:
        """Every user's LoRA names, lower-cased: what is not the operator's to share.

        Only names, and only to decide ownership; nothing here is shown to anyone.
        """
        async with self._sessions() as session:
            names = (await session.scalars(select(func.lower(LoraModel.name)).distinct())).all()
        return set(names)

    async def replicate_models(self) -> dict[str, set[str]]:
        """Lower-cased `owner/name` of each Replicate-trained LoRA → the users who own it.

        Both the destination a training pushes to and the version it made count, so a
        model is claimed from the moment its training is confirmed.
        """
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(
                        LoraModel.user_id, LoraModel.replicate_version, LoraModel.parameters
                    ).where(LoraModel.backend == "replicate")
                )
            ).all()
        owners: dict[str, set[str]] = {}
        for user_id, version, parameters in rows:
            for ref in (version, (parameters or {}).get("destination")):
                if isinstance(ref, str) and ref.strip():
                    model = ref.strip().partition(":")[0].lower()
                    owners.setdefault(model, set()).add(user_id)
        return owners

    async def update(self, lora_id: str, user_id: str, **values: Any) -> LoraRecord:
        """Set fields (status, files, metrics, ...) of the user's row."""
        if "status" in values and values["status"] not in STATUSES:
            raise ValueError(f"unknown LoRA status {values['status']!r}")
        if values.get("status") in FINAL:
            values.setdefault("finished_at", utcnow())
        async with write_session(self._sessions) as session:
            await session.execute(
                update(LoraModel)
                .where(LoraModel.id == lora_id, LoraModel.user_id == user_id)
                .values(**values)
            )
        return await self.by_id(lora_id, user_id)

    async def progress(
        self, lora_id: str, *, step: int, losses: list[list[float]], status: str = "running"
    ) -> None:
        """A running job's step and loss history; ignored once the row is final."""
        async with write_session(self._sessions) as session:
            await session.execute(
                update(LoraModel)
                .where(LoraModel.id == lora_id, LoraModel.status.in_(ACTIVE))
                .values(step=step, losses=losses, status=status)
            )

    async def mark_interrupted(self, alive: Select[tuple[str]] | None = None) -> int:
        """Mark interrupted the rows left queued/running by a process that died; returns
        how many. Run at start-up, before this process runs any job, and on every
        heartbeat (`AppInstances.sweeps`) for processes that die while others run.

        A row that names its process (`instance_id`) is interrupted only when that
        process is not among `alive` (`AppInstances.alive()`, evaluated inside this
        update): another process sharing the database keeps its running trainings. A
        row without a process (made before 0011, or by a process without instances) is
        interrupted as it always was. Without `alive` no process can be told dead, so
        only those rows are.
        """
        dead_owner = LoraModel.instance_id.is_(None)
        if alive is not None:
            dead_owner = or_(dead_owner, LoraModel.instance_id.not_in(alive.scalar_subquery()))
        async with write_session(self._sessions) as session:
            result = await session.execute(
                update(LoraModel)
                .where(LoraModel.status.in_(ACTIVE), dead_owner)
                .values(
                    status="interrupted",
                    finished_at=utcnow(),
                    error="The app stopped while this training ran.",
                )
            )
        return int(result.rowcount or 0)


def _taken(name: str) -> str:
    return (
        f"You already have a LoRA (or a training) called {name!r}. Choose another name, "
        "or `/train resume NAME` to continue a stopped one."
    )


@functools.cache
def _for_user_query(by_status: bool) -> Any:
    """A user's LoRAs (of one status), newest first: read on every agent turn, so built
    once (building it per call cost more than running it)."""
    query = select(*row_columns(LoraModel)).where(LoraModel.user_id == bindparam("user_id"))
    if by_status:
        query = query.where(LoraModel.status == bindparam("status"))
    return query.order_by(LoraModel.created_at.desc())
