"""sidebar search: an index over message text and thread names on both databases

The sidebar searches a user's conversations for a substring of their name or of any
user or assistant message (case-insensitive; `%` and `_` are literal). Until now that
read every message step; now each database answers from an index:

- PostgreSQL: `pg_trgm` GIN trigram indexes on `threads.name` and on `steps.output`
  (partial: message steps only), which `ILIKE '%q%'` uses for q of 3+ characters. The
  extension is created here; where this role may not create it (not a superuser, not
  the database owner, or the server lacks the contrib package) the indexes are skipped
  with a warning and search still works, unindexed. Creating the extension and then
  `CREATE INDEX` as below adds them later by hand. The downgrade leaves the extension
  installed: something else may use it.
- SQLite: an FTS5 table with the trigram tokenizer (SQLite 3.34+), `step_search`, over
  `step_search_docs` (its external content: one row per message step, keyed by the
  step id), kept in step with `steps` by triggers. `detail=none`: the index says only
  which messages hold every trigram of a search (a fifth of the size of one with
  positions); LIKE on those few documents then decides, so a match means what it
  meant before. Where FTS5 or the trigram tokenizer is missing the tables are not
  made, and search falls back to LIKE with a warning.

None of this is in the SQLAlchemy models (they cannot declare virtual tables, triggers
or opclass indexes); `memory.db.is_search_object` names it for schema comparisons. A
later migration that rebuilds `steps` on SQLite (batch mode) drops its triggers and must
create them again. Dropping `threads` or `users` on SQLite needs foreign keys off (as
memory.db.migrate has them): with them on, SQLite deletes the rows first, the cascade
reaches the triggers, and FTS5 cannot be written while a table is dropped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

from core.logging_setup import get_logger

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

log = get_logger(__name__)

_MESSAGE_TYPES = "('user_message', 'assistant_message')"

# -------------------------------------------------------------------- PostgreSQL


def _trigram_schema(bind: sa.Connection) -> str | None:
    """The schema pg_trgm lives in, creating the extension if it can; None if it cannot."""
    find = sa.text(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    )
    schema = bind.scalar(find)
    if schema is not None:
        return schema
    savepoint = bind.begin_nested()  # a refusal must not abort the whole migration
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        savepoint.rollback()
        log.warning(
            "search_index_skipped",
            database="postgresql",
            reason=f"cannot create extension pg_trgm: {str(exc.orig).splitlines()[0][:200]}",
            effect="sidebar search works, unindexed; create the extension and rerun 0010's "
            "CREATE INDEX statements to index it",
        )
        return None
    savepoint.commit()
    return bind.scalar(find)


def _postgres_upgrade(bind: sa.Connection) -> None:
    schema = _trigram_schema(bind)
    if schema is None:
        return
    ops = f'"{schema}".gin_trgm_ops'
    op.execute(
        f"CREATE INDEX IF NOT EXISTS ix_steps_output_trgm ON steps USING gin (output {ops}) "
        f"WHERE type IN {_MESSAGE_TYPES}"
    )
    op.execute(f"CREATE INDEX IF NOT EXISTS ix_threads_name_trgm ON threads USING gin (name {ops})")


def _postgres_downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_threads_name_trgm")
    op.execute("DROP INDEX IF EXISTS ix_steps_output_trgm")


# ------------------------------------------------------------------------ SQLite

# Forgetting a step's document first also clears one left behind by a row removed
# without its delete trigger (REPLACE, or a delete with foreign keys off).
_FORGET_OLD = """
        INSERT INTO step_search (step_search, rowid, output)
        SELECT 'delete', id, output FROM step_search_docs WHERE step_id = {row}.id;
        DELETE FROM step_search_docs WHERE step_id = {row}.id;"""

_SQLITE_TRIGGERS = (
    f"""
    CREATE TRIGGER steps_search_insert AFTER INSERT ON steps
    WHEN new.type IN {_MESSAGE_TYPES} AND new.output IS NOT NULL
    BEGIN{_FORGET_OLD.format(row="new")}
        INSERT INTO step_search_docs (step_id, thread_id, output)
        VALUES (new.id, new.thread_id, new.output);
        INSERT INTO step_search (rowid, output)
        SELECT id, output FROM step_search_docs WHERE step_id = new.id;
    END
    """,
    f"""
    CREATE TRIGGER steps_search_delete AFTER DELETE ON steps
    BEGIN{_FORGET_OLD.format(row="old")}
    END
    """,
    # Chainlit rewrites a step many times while it streams; only a change of what is
    # indexed touches the index.
    f"""
    CREATE TRIGGER steps_search_update AFTER UPDATE OF output, type, thread_id ON steps
    WHEN old.output IS NOT new.output OR old.type IS NOT new.type
        OR old.thread_id IS NOT new.thread_id
    BEGIN{_FORGET_OLD.format(row="old")}
        INSERT INTO step_search_docs (step_id, thread_id, output)
        SELECT new.id, new.thread_id, new.output
        WHERE new.type IN {_MESSAGE_TYPES} AND new.output IS NOT NULL;
        INSERT INTO step_search (rowid, output)
        SELECT id, output FROM step_search_docs WHERE step_id = new.id;
    END
    """,
)


def _sqlite_has_trigram_fts(bind: sa.Connection) -> bool:
    try:
        bind.exec_driver_sql(
            "CREATE VIRTUAL TABLE temp.step_search_probe USING fts5(x, tokenize='trigram')"
        )
    except sa.exc.OperationalError as exc:
        log.warning(
            "search_index_skipped",
            database="sqlite",
            sqlite_version=bind.exec_driver_sql("SELECT sqlite_version()").scalar(),
            reason=f"no FTS5 trigram tokenizer (needs SQLite 3.34+ with FTS5): {exc.orig}",
            effect="sidebar search works, unindexed (LIKE)",
        )
        return False
    bind.exec_driver_sql("DROP TABLE temp.step_search_probe")
    return True


def _sqlite_upgrade(bind: sa.Connection) -> None:
    if not _sqlite_has_trigram_fts(bind):
        return
    op.execute(
        """
        CREATE TABLE step_search_docs (
            id INTEGER PRIMARY KEY,
            step_id VARCHAR(36) NOT NULL UNIQUE,
            thread_id VARCHAR(36) NOT NULL,
            output TEXT NOT NULL
        )
        """
    )
    op.execute(
        "CREATE VIRTUAL TABLE step_search USING fts5(output, content='step_search_docs', "
        "content_rowid='id', tokenize='trigram', detail='none')"
    )
    op.execute(
        "INSERT INTO step_search_docs (step_id, thread_id, output) "
        f"SELECT id, thread_id, output FROM steps WHERE type IN {_MESSAGE_TYPES} "
        "AND output IS NOT NULL"
    )
    op.execute("INSERT INTO step_search (step_search) VALUES ('rebuild')")
    for trigger in _SQLITE_TRIGGERS:
        op.execute(trigger)


def _sqlite_downgrade() -> None:
    for trigger in ("steps_search_insert", "steps_search_delete", "steps_search_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS step_search")
    op.execute("DROP TABLE IF EXISTS step_search_docs")


# ---------------------------------------------------------------------- revision


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _postgres_upgrade(bind)
    elif bind.dialect.name == "sqlite":
        _sqlite_upgrade(bind)


def downgrade() -> None:
    name = op.get_bind().dialect.name
    if name == "postgresql":
        _postgres_downgrade()
    elif name == "sqlite":
        _sqlite_downgrade()
