"""Step writes on SQLite, batched into one transaction in one writer thread.

Chainlit writes every message several times per turn (created, streamed, finished), each
in a task of its own. SQLite takes one writer at a time, and an async write transaction
holds that lock across every statement's round trip through the event loop: at 50 busy
sessions each trip waits behind other sessions' work, the queue of writes barely moves,
and messages reached the database seconds after their replies were shown.

Here the writes waiting at any moment are taken together and run, statement after
statement, in a thread of their own (its own connection to the same file) under the
process's write lock (memory.db.one_writer): one trip through the event loop per batch,
not four per write. Each write has a savepoint, so one bad write fails alone.

Only the common case is handled here: a step in a conversation that exists and is the
requester's. Anything else (a new conversation, someone else's, a step id taken by
another conversation) is answered `SLOW` and goes through the data layer's full path.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from memory.db import SQLITE_BUSY_TIMEOUT_MS, one_writer, sqlite_pragmas
from memory.models import Step

MAX_BATCH = 200  # writes per transaction: a long one would hold the lock too long


class Outcome(enum.Enum):
    WRITTEN = "written"  # stored, or a newer version of it already was
    SLOW = "slow"  # not the requester's existing conversation: take the full path
    FOREIGN = "foreign"  # the step id belongs to another conversation


@dataclass
class _Write:
    params: dict[str, Any]  # the upsert's parameters (Step's columns, id, position)
    touch: dict[str, Any]  # the thread touch's parameters
    system: bool  # the server's own write: any conversation is its own
    future: asyncio.Future[Outcome]


class SqliteStepWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        upsert: Any,
        touch: Callable[[bool], Any],
    ) -> None:
        self._async_engine = engine
        self._engine = create_engine(
            engine.url.set(drivername="sqlite"),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=1,
            max_overflow=0,
        )
        event.listen(self._engine, "connect", sqlite_pragmas)
        self._upsert = upsert
        self._touch = touch
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-steps")
        self._waiting: list[_Write] = []
        self._drainer: asyncio.Task[None] | None = None

    async def write(
        self, params: dict[str, Any], touch: dict[str, Any], *, system: bool
    ) -> Outcome:
        """Queue one step write; returns when its batch is committed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Write(params, touch, system, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="sqlite-step-writes")
        return await asyncio.shield(future)

    async def flush(self) -> None:
        """Wait until every queued write is committed (at shutdown)."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.shield(self._drainer)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[:MAX_BATCH]
            del self._waiting[:MAX_BATCH]
            try:
                async with one_writer(self._async_engine):
                    results = await loop.run_in_executor(self._thread, self._run, batch)
            except Exception as exc:  # the whole transaction failed: each write says so
                results = [exc] * len(batch)
            for write, result in zip(batch, results, strict=True):
                if write.future.done():
                    continue
                if isinstance(result, BaseException):
                    write.future.set_exception(result)
                else:
                    write.future.set_result(result)

    def _run(self, batch: list[_Write]) -> list[Outcome | Exception]:
        """One transaction for the batch (in the writer thread)."""
        results: list[Outcome | Exception] = []
        with self._engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            for write in batch:
                savepoint = conn.begin_nested()
                try:
                    results.append(self._one(conn, write))
                    savepoint.commit()
                except Exception as exc:
                    savepoint.rollback()
                    results.append(exc)
            conn.commit()
        return results

    def _one(self, conn: Connection, write: _Write) -> Outcome:
        if conn.execute(self._touch(write.system), write.touch).scalar() is None:
            return Outcome.SLOW
        if conn.execute(self._upsert, write.params).scalar() is not None:
            return Outcome.WRITTEN
        step_id, thread_id = write.params["id"], write.params["thread_id"]
        owner = conn.execute(select(Step.thread_id).where(Step.id == step_id)).scalar()
        return Outcome.WRITTEN if owner == thread_id else Outcome.FOREIGN
