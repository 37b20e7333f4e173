"""A step write on PostgreSQL as one statement, in one round trip.

Chainlit writes every message several times per turn (created, streamed, finished). On
the full path each write was a transaction of four round trips to the server (BEGIN,
the thread's activity time, the step's upsert, COMMIT) plus an ORM session around them;
at 50 busy sessions the step writes were a quarter of the server's CPU on a
PostgreSQL turn.

Here the thread's touch and the step's upsert are one statement (the touch as a
data-modifying CTE, the upsert inserting only the row the touch returned), run in
autocommit: one round trip, and atomic as a single statement is. The statement says
what happened: no thread touched (a new conversation, or not the requester's) sends
the write down the data layer's full path, as memory/sqlite_step_writer.py does on
SQLite; a touched thread with no step written is either a stale write (a newer version
is stored) or a step id that belongs to another conversation, told apart by one read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from memory.db import for_reads
from memory.models import Step
from memory.sqlite_step_writer import Outcome

_STEP = "step_"  # the prefix of the step's parameters in the statement


class PgStepWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        attributes: Sequence[str],
        touch: Callable[[bool], Any],
        on_conflict: Callable[[Any], Any],
    ) -> None:
        self._engine = for_reads(engine)  # autocommit: the one statement is its own transaction
        # Step's attributes, named as the write's parameters, and their columns.
        self._attributes = list(attributes)
        self._columns = [Step.__mapper__.attrs[a].columns[0] for a in self._attributes]
        self._touch = touch
        self._on_conflict = on_conflict  # the data layer's rule for an id already stored
        self._statements: dict[bool, Any] = {}

    async def write(
        self, params: dict[str, Any], touch: dict[str, Any], *, system: bool
    ) -> Outcome:
        """The step upserted if its thread is the requester's (any, for the server)."""
        # The step's parameters are renamed: SQLAlchemy would make any that share a name
        # with a thread's column (id, name, created_at) into SET clauses of the touch.
        named = {_STEP + key: value for key, value in params.items()}
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._statement(system), {**named, **touch})).one()
            if not row.touched:
                return Outcome.SLOW
            if row.written:
                return Outcome.WRITTEN
            owner = await conn.scalar(select(Step.thread_id).where(Step.id == params["id"]))
        return Outcome.WRITTEN if owner == params["thread_id"] else Outcome.FOREIGN

    async def flush(self) -> None:
        """Nothing is queued here: each write is done when its caller's await returns."""

    def close(self) -> None:
        pass

    def _statement(self, system: bool) -> Any:
        found = self._statements.get(system)
        if found is None:
            found = self._statements[system] = self._build(system)
        return found

    def _build(self, system: bool) -> Any:
        touched = self._touch(system).cte("touched")
        pairs = zip(self._attributes, self._columns, strict=True)
        values = select(*(bindparam(_STEP + a, type_=c.type) for a, c in pairs))
        names = [c.name for c in self._columns]
        upsert = insert(Step).from_select(names, values.select_from(touched))
        written = self._on_conflict(upsert).returning(Step.id).cte("written")
        return select(
            select(func.count()).select_from(touched).scalar_subquery().label("touched"),
            select(func.count()).select_from(written).scalar_subquery().label("written"),
        )
