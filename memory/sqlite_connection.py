"""SQLite connections whose statements make one trip to the connection's thread, not four.

aiosqlite runs each connection's calls on a thread of its own, and SQLAlchemy's adapter
makes four calls per statement: open a cursor, execute, fetch the rows, close the cursor.
Each is a round trip: the call is queued to the thread, and its result wakes the event
loop through its self-pipe (a write there, a read and a task step here). At 50 sessions
those wake-ups were 6.5 % of the loop's busy time in image turns (about 20 statements
each). Here a statement's four calls are one function run on the thread, and the rows,
description, rowcount and lastrowid come back together; the cursor the adapter holds
answers from them without another trip.

Everything else is aiosqlite's: the thread, the queue, commit, rollback, close (the
adapter's isolation-level setter reaches the same queue). The cursor keeps every row of
its statement until it is read, which is what the adapter does anyway for a
non-streaming cursor; nothing here asks SQLite for a server-side (streamed) result.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite
from sqlalchemy.engine import make_url

_Outcome = tuple[Any, list[Any], int, int | None]


def _run(connection: sqlite3.Connection, sql: str, parameters: Any, many: bool) -> _Outcome:
    """On the connection's thread: the whole statement, its rows read and its cursor
    closed."""
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneTripCursor:
    """The async cursor SQLAlchemy's adapter expects, answering from one trip's outcome."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> OneTripCursor:
        return await self._trip(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Any) -> OneTripCursor:
        return await self._trip(sql, parameters, many=True)

    async def _trip(self, sql: str, parameters: Any, many: bool) -> OneTripCursor:
        connection = self._connection
        outcome = await connection._execute(_run, connection._conn, sql, parameters, many)
        self.description, self._rows, self.rowcount, self.lastrowid = outcome
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def close(self) -> None:
        self._rows = []


class OneTripConnection(aiosqlite.Connection):
    """aiosqlite's connection, whose cursors run a statement in one trip."""

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        return OneTripCursor(self)


def creator(url: str, **kwargs: Any) -> Callable[[], OneTripConnection]:
    """The engine's `async_creator` for a `sqlite+aiosqlite` URL: the arguments
    SQLAlchemy's aiosqlite dialect would give `aiosqlite.connect` for it (file, `uri`,
    `check_same_thread`, query options), with `kwargs` (the engine's `connect_args`)."""
    parsed = make_url(url)
    args, options = parsed.get_dialect()().create_connect_args(parsed)
    options.update(kwargs)

    def connect() -> OneTripConnection:
        connection = OneTripConnection(lambda: sqlite3.connect(*args, **options), 64)
        # As SQLAlchemy does for aiosqlite: a connection left open never holds up exit.
        connection._thread.daemon = True
        return connection

    return connect
