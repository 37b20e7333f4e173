"""Engine and session factory, and the migrations applied at start-up.

SQLite gets WAL mode, a busy timeout and foreign keys on every connection, so concurrent
writers wait instead of failing and readers never block writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Sidebar search (migration 0010), made outside what the models can declare: SQLite's
# FTS5 table `step_search` (FTS5 names its shadow tables after it) with its document
# table `step_search_docs` and triggers; PostgreSQL's pg_trgm GIN indexes.
SEARCH_TABLE = "step_search"
SEARCH_INDEXES = frozenset({"ix_steps_output_trgm", "ix_threads_name_trgm"})


def is_search_object(name: str | None) -> bool:
    """Whether `name` is part of the search index, which the models do not declare."""
    if not name:
        return False
    return name in SEARCH_INDEXES or name == SEARCH_TABLE or name.startswith(SEARCH_TABLE + "_")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `url`; the SQLite file's folder is created if missing."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the newest by default); safe to run on every start.

    On SQLite, foreign keys are off while migrations run: a migration that rebuilds a
    table (batch mode: copy, drop, rename) would otherwise have the drop cascade into
    every table that references it. The references are checked before the commit
    instead, and a violation stops the upgrade.
    """

    def upgrade(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), revision)

    if engine.dialect.name != "sqlite":
        async with engine.begin() as connection:
            await connection.run_sync(upgrade)
        return
    async with engine.connect() as connection:
        # Outside any transaction, or SQLite ignores the pragma.
        await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        await connection.commit()
        try:
            await connection.run_sync(upgrade)
            broken = (await connection.exec_driver_sql("PRAGMA foreign_key_check")).all()
            if broken:
                raise RuntimeError(f"Migration left rows with broken references: {broken[:5]}")
            await connection.commit()
        finally:
            await connection.rollback()
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()
