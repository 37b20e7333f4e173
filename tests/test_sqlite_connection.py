"""The SQLite connection that runs a statement in one trip to its thread, under the
app's engine: the same answers SQLAlchemy gets from plain aiosqlite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from memory.db import create_engine
from memory.sqlite_connection import OneTripConnection


@pytest.fixture
async def engine(tmp_path: Path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'one.db'}")
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)")
        )
    yield engine
    await engine.dispose()


async def test_rows_counts_ids_and_returning_come_back_as_from_aiosqlite(engine) -> None:
    async with engine.begin() as connection:
        inserted = await connection.execute(text("INSERT INTO notes (body) VALUES ('a')"))
        assert inserted.lastrowid == 1 and inserted.rowcount == 1
        many = await connection.execute(
            text("INSERT INTO notes (body) VALUES (:body)"), [{"body": "b"}, {"body": "c"}]
        )
        assert many.rowcount == 2
        returned = await connection.execute(
            text("UPDATE notes SET body = body || '!' WHERE id > 1 RETURNING id, body")
        )
        assert sorted(returned.all()) == [(2, "b!"), (3, "c!")]
        updated = await connection.execute(text("UPDATE notes SET body = 'z' WHERE id = 99"))
        assert updated.rowcount == 0
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT id, body FROM notes ORDER BY id"))
        assert rows.keys() == ["id", "body"]
        assert rows.all() == [(1, "a"), (2, "b!"), (3, "c!")]
        first = await connection.execute(text("SELECT body FROM notes ORDER BY id"))
        assert first.scalar() == "a"
        assert (await connection.execute(text("SELECT 1 WHERE 0"))).first() is None


async def test_errors_are_sqlalchemys_and_a_failed_transaction_keeps_nothing(engine) -> None:
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(text("INSERT INTO notes (body) VALUES ('a')"))
            await connection.execute(text("INSERT INTO notes (body) VALUES ('a')"))
    with pytest.raises(OperationalError, match="no such table"):
        async with engine.connect() as connection:
            await connection.execute(text("SELECT * FROM missing"))
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM notes"))).scalar() == 0


async def test_a_statement_is_one_trip_to_the_connections_thread(engine) -> None:
    async with engine.connect() as connection:
        raw = (await connection.get_raw_connection()).driver_connection
        assert isinstance(raw, OneTripConnection)
        trips: list[str] = []
        queue = raw._execute

        async def counted(fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            trips.append(getattr(fn, "__name__", repr(fn)))
            return await queue(fn, *args, **kwargs)

        raw._execute = counted
        rows = await connection.execute(text("SELECT 1, 2"))
        assert rows.all() == [(1, 2)]
        assert trips == ["_run"]  # cursor, execute, fetch and close: one trip
