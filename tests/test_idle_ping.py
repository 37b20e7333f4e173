"""Pooled PostgreSQL connections killed by the server (a restart, a proxy's idle cut).

The pool pings a connection before use only when it has sat idle (memory/idle_ping.py).
Here the server really terminates the app's connections (`pg_terminate_backend`):
- after an idle spell, the next transaction works: the ping finds the dead connection
  and the pool opens a fresh one;
- while in steady use (no ping), one statement fails with a disconnect error and the
  pool is invalidated, so the very next one works on a fresh connection.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from memory import idle_ping
from memory.db import create_engine
from tests.db_fixtures import _admin_connection, postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def postgres_url() -> Any:
    """A database of its own: the server's connections to it are what these tests kill."""
    async with postgres_database() as url:
        yield url


async def _kill_connections(database: str) -> int:
    """What a server restart does to the app's pooled connections."""
    admin = await _admin_connection()
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
    finally:
        await admin.close()
    return len(rows)


async def _backend_pid(engine: Any) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()


async def test_an_idle_connection_killed_by_the_server_is_replaced_unseen(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    engine = create_engine(postgres_url, pool_size=2, max_overflow=0)
    clock = [1000.0]
    monkeypatch.setattr(idle_ping, "_clock", lambda: clock[0])
    try:
        first = await _backend_pid(engine)
        assert await _kill_connections(engine.url.database) >= 1
        clock[0] += idle_ping.IDLE_BEFORE_PING_S  # it sat idle
        second = await _backend_pid(engine)  # no error reaches the caller
        assert second != first
    finally:
        await engine.dispose()


async def test_a_connection_in_steady_use_is_not_pinged_and_recovers_after_one_failure(
    postgres_url: str,
):
    engine = create_engine(postgres_url, pool_size=1, max_overflow=0)  # idle bound 10 s
    try:
        first = await _backend_pid(engine)
        assert await _backend_pid(engine) == first  # reused, unpinged
        await _kill_connections(engine.url.database)
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        assert await _backend_pid(engine) != first  # the pool was renewed
    finally:
        await engine.dispose()


async def test_the_ping_is_only_sent_after_the_idle_spell(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    engine = create_engine(postgres_url, pool_size=1, max_overflow=0)
    clock = [1000.0]
    monkeypatch.setattr(idle_ping, "_clock", lambda: clock[0])
    pings: list[int] = []
    dialect = engine.sync_engine.dialect
    real_ping = dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        for _ in range(5):
            await _backend_pid(engine)
            clock[0] += idle_ping.IDLE_BEFORE_PING_S / 2
        assert pings == []  # in steady use
        clock[0] += idle_ping.IDLE_BEFORE_PING_S
        await _backend_pid(engine)
        assert pings == [1]
    finally:
        await engine.dispose()
