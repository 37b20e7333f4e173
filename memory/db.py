"""Engine and session factory, the one-writer discipline, and the start-up migrations.

SQLite gets WAL mode, a busy timeout and foreign keys on every connection, so readers
never block writers. Writers are taken one at a time per process (`write_transaction`,
`write_session`): an asyncio lock in front of `BEGIN IMMEDIATE`. SQLite allows one
writer anyway, and left to its busy handler (which polls with sleeps of up to 100 ms)
writers that keep missing the lock under load fail with `database is locked` once the
timeout runs out; a FIFO lock hands it over at once and in order. The busy timeout is
left only for other processes (the CLI) sharing the file.

PostgreSQL needs none of this: its writers wait for row locks themselves. Both pools are
sized by settings (`ATELIER_DB_POOL_SIZE`, `ATELIER_DB_MAX_OVERFLOW`; see the README).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from memory import idle_ping, sqlite_connection

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# Sidebar search (migration 0010) and gallery prompt search (0013), made outside what
# the models can declare: SQLite's FTS5 tables `step_search` and `image_search` (FTS5
# names its shadow tables after them) with their document tables (`…_docs`) and
# triggers; PostgreSQL's pg_trgm GIN indexes.
SEARCH_TABLES = ("step_search", "image_search")
SEARCH_INDEXES = frozenset(
    {
        "ix_steps_output_trgm",
        "ix_threads_name_trgm",
        "ix_images_prompt_typed_trgm",
        "ix_images_prompt_sent_trgm",
    }
)

# Connections per app process (on SQLite, each is a thread of aiosqlite's; on PostgreSQL,
# a server connection). PostgreSQL: a turn holds one only for the length of a
# transaction, and 50 busy sessions kept up to ~40 in use at once. They are kept open:
# connections beyond the pool size are closed as soon as they are returned, and at 50
# sessions that churn opened ~190 new server connections in one minute of turns. Two
# processes and the CLI stay under the server's default max_connections (100). SQLite
# had SQLAlchemy's default (5, then 10 more closed on return): at 50 sessions a turn
# and image run opened 134 connections to the file (a thread, the file, its pragmas
# each), 86 with these (benchmarks/turn_latency.py, one round of each).
DEFAULT_POOL_SIZE = 30
DEFAULT_MAX_OVERFLOW = 10
SQLITE_BUSY_TIMEOUT_MS = 30_000  # other processes only; in-process writers queue


def is_search_object(name: str | None) -> bool:
    """Whether `name` is part of the search index, which the models do not declare."""
    if not name:
        return False
    return name in SEARCH_INDEXES or any(
        name == table or name.startswith(table + "_") for table in SEARCH_TABLES
    )


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engine(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
) -> AsyncEngine:
    """An async engine for `url`; the SQLite file's folder is created if missing."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            # One trip to the connection's thread per statement (memory/sqlite_connection).
            async_creator=sqlite_connection.creator(url, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000),
            # Kept open, as on PostgreSQL (DEFAULT_POOL_SIZE says why).
            pool_size=pool_size,
            max_overflow=max_overflow,
        )
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    idle_ping.ping_when_idle(engine)  # not `pool_pre_ping`: three round trips per checkout
    return engine


def for_reads(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for reads that need no transaction: a single statement, or several that
    need no common snapshot. On PostgreSQL it runs in autocommit (a flag on the pooled
    connection: the same pool), so a read is one round trip, not three (BEGIN, the read,
    ROLLBACK); on SQLite nothing changes. Never for writes: in autocommit each statement
    commits alone."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


# ------------------------------------------------------------------ one writer

# One lock per SQLite engine (its pool, which option-engines share) and event loop.
_write_locks: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)
_lock_holders: weakref.WeakKeyDictionary[asyncio.Lock, Any] = weakref.WeakKeyDictionary()


def _lock_for(engine: AsyncEngine) -> asyncio.Lock:
    per_loop = _write_locks.setdefault(engine.sync_engine.pool, weakref.WeakKeyDictionary())
    loop = asyncio.get_running_loop()
    lock = per_loop.get(loop)
    if lock is None:
        lock = per_loop[loop] = asyncio.Lock()
    return lock


@asynccontextmanager
async def one_writer(engine: AsyncEngine) -> AsyncIterator[None]:
    """This process's turn to write to a SQLite database (a no-op on PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        yield
        return
    lock = _lock_for(engine)
    task = asyncio.current_task()
    if lock.locked() and _lock_holders.get(lock) is task:
        # It would wait for itself: a write transaction opened inside another.
        raise RuntimeError("A write transaction was opened inside another one.")
    async with lock:
        _lock_holders[lock] = task
        try:
            yield
        finally:
            _lock_holders.pop(lock, None)


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that holds the database's write lock from its start.

    On SQLite the reads it makes before writing see what it will write over: `BEGIN
    IMMEDIATE` (pysqlite itself would begin only at the first write, leaving earlier
    reads outside the transaction, and a deferred BEGIN fails at once when it upgrades).
    """
    async with one_writer(engine), engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


@asynccontextmanager
async def write_session(sessions: async_sessionmaker) -> AsyncIterator[AsyncSession]:
    """An ORM session in a write transaction (`write_transaction`); commits on exit."""
    engine: AsyncEngine = sessions.kw["bind"]
    async with one_writer(engine), sessions() as session, session.begin():
        if engine.dialect.name == "sqlite":
            await session.execute(text("BEGIN IMMEDIATE"))
        yield session


# ------------------------------------------------------------------ migrations

_REVISION_LINE = re.compile(r'^(down_revision|revision)\s*=\s*"?([\w]+|None)"?', re.M)


def head_revision() -> str:
    """The newest migration, read from the files: knowing it costs no alembic import."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION_LINE.findall(path.read_text()))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision", "None"))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"Migrations must have one head; found {sorted(heads)}.")
    return heads.pop()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at; None when it was never migrated."""

    def read(connection: Connection) -> str | None:
        from sqlalchemy import inspect

        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def _alembic_config(connection: Connection) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the newest by default); safe to run on every start.

    A database already at the newest revision is left alone without loading alembic,
    which costs a start a few hundred milliseconds.

    On SQLite, foreign keys are off while migrations run: a migration that rebuilds a
    table (batch mode: copy, drop, rename) would otherwise have the drop cascade into
    every table that references it. The references are checked before the commit
    instead, and a violation stops the upgrade.
    """
    if revision == "head" and await current_revision(engine) == head_revision():
        return

    def upgrade(connection: Connection) -> None:
        from alembic import command

        command.upgrade(_alembic_config(connection), revision)

    if engine.dialect.name != "sqlite":
        async with engine.begin() as connection:
            # Replicas starting together would each create the same tables; the lock
            # makes the later ones wait, and alembic then finds the schema current.
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext('atelier-migrate'))")
            )
            await connection.run_sync(upgrade)
        return
    async with one_writer(engine), engine.connect() as connection:
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
