"""Writers under load: many at once all succeed, in order, on both databases.

SQLite allows one writer; left to its busy handler, writers that keep missing the lock
under load fail with `database is locked`. memory.db hands the lock over in turn.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from memory.db import current_revision, head_revision, migrate, write_transaction
from memory.ledger import Ledger
from memory.models import LedgerEntry, Step
from tests.db_fixtures import *  # noqa: F403
from tests.db_fixtures import step_dict

WRITERS = 60


async def test_many_writers_at_once_all_succeed(engine, data_layer, users, requester) -> None:
    """Step writes and ledger reservations from 60 tasks at once: none fails, none lost."""
    alice = await users.add("alice", "password-for-alice")
    requester.act_as(alice)
    ledger = Ledger(engine)
    thread_id = str(uuid.uuid4())
    await data_layer.write_step(step_dict(thread_id, type="user_message"), 1)

    async def one(i: int) -> None:
        await data_layer.write_step(step_dict(thread_id, output=f"reply {i}"), 10 + i)
        reservation = await ledger.reserve(
            user_id=alice.id,
            thread_id=thread_id,
            backend="openai",
            model="gpt-image-2",
            what="image",
            estimate_usd=Decimal("0.01"),
        )
        await ledger.settle(
            reservation.id, user_id=alice.id, actual_usd=Decimal("0.01"), source="reported"
        )

    await asyncio.gather(*(one(i) for i in range(WRITERS)))
    async with engine.connect() as conn:
        steps = await conn.scalar(select(func.count()).where(Step.thread_id == thread_id))
        settled = await conn.scalar(select(func.count()).where(LedgerEntry.status == "settled"))
    assert steps == WRITERS + 1
    assert settled == WRITERS


async def test_a_write_inside_another_is_refused_not_hung(engine) -> None:
    """It would wait for its own lock for ever on SQLite; both databases refuse it alike."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL writers do not share one lock")
    async with write_transaction(engine):
        with pytest.raises(RuntimeError, match="inside another"):
            async with asyncio.timeout(5), write_transaction(engine):
                pass


async def test_writers_in_other_tasks_wait_their_turn(engine) -> None:
    """A task started while another holds the lock waits for it (no false refusal)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL writers do not share one lock")
    order: list[str] = []

    async def second() -> None:
        async with write_transaction(engine):
            order.append("second")

    async with write_transaction(engine):
        task = asyncio.create_task(second())
        await asyncio.sleep(0.05)
        order.append("first")
    await task
    assert order == ["first", "second"]


async def test_start_at_head_skips_the_migration_tool(engine) -> None:
    """A migrated database is recognised without importing alembic (start-up time)."""
    assert await current_revision(engine) == head_revision()
    url = engine.url.render_as_string(hide_password=False)
    code = (
        "import asyncio, sys\n"
        "from memory.db import create_engine, migrate\n"
        f"engine = create_engine({url!r})\n"
        "asyncio.run(migrate(engine))\n"
        "print('alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    await migrate(engine)  # and again in-process: still at head, nothing to do
    assert await current_revision(engine) == head_revision()
