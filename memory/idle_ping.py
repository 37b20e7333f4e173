"""A pooled database connection is pinged before use only when it has sat idle.

SQLAlchemy's `pool_pre_ping` pings on every checkout. With asyncpg a ping is three round
trips (BEGIN, an empty statement, ROLLBACK: the dialect wraps it in a transaction for
pgbouncer), paid before every transaction. At 50 busy sessions that was about a fifth
of the server's CPU on a PostgreSQL chat turn, spent confirming connections that had
answered a moment before.

A connection goes stale while nobody uses it: the server restarts, a proxy or firewall
drops an idle TCP connection. So one idle for IDLE_BEFORE_PING_S or more is pinged when
checked out, and a failed ping makes the pool open a fresh one (SQLAlchemy's documented
`checkout` protocol: raise `DisconnectionError`). A connection lost while in steady use
fails the statement it was running; SQLAlchemy then invalidates the whole pool, so the
next checkouts connect afresh (tests/test_idle_ping.py shows both).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine

from core.logging_setup import get_logger

log = get_logger(__name__)

IDLE_BEFORE_PING_S = 10.0
_CHECKED_IN_AT = "atelier_checked_in_at"  # in the connection record's `info`
_clock = time.monotonic  # a test moves it on


def ping_when_idle(engine: AsyncEngine, idle_s: float = IDLE_BEFORE_PING_S) -> None:
    """Ping `engine`'s pooled connections on checkout after `idle_s` seconds unused."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if record is not None:  # None: a connection detached from the pool
            record.info[_CHECKED_IN_AT] = _clock()

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN_AT)
        if since is None or _clock() - since < idle_s:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            log.info("db_connection_stale", error=type(error).__name__)
            raise exc.DisconnectionError("the pooled connection did not answer") from error

    event.listen(sync_engine, "checkin", checked_in)
    event.listen(sync_engine, "checkout", checked_out)
