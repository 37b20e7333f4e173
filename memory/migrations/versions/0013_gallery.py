"""gallery: filter columns, a per-user newest-first index, prompt search, image embeddings

The gallery lists one user's images and clips newest first, paged by (created_at, id),
filtered and searched by prompt text. So:

- `images.style` and `images.lora_names` copy out of `parameters` what the gallery
  filters on (memory/image_facets.py says why and how), filled here for every older
  image by a copy of those rules, a page of rows at a time.
- `ix_images_user_created` and `ix_videos_user_created` on (user_id, created_at, id):
  the grid's order and its keyset cursor, read from the index for any number of files.
- `image_embeddings`: one CLIP vector per image for likeness search (memory/models.py).
- The prompt search index, as 0010 made the sidebar's:
  - PostgreSQL: `pg_trgm` GIN indexes on `images.prompt_typed` and `images.prompt_sent`,
    which `ILIKE '%q%'` uses for q of 3+ characters; skipped with a warning where the
    extension cannot be created (search then works, unindexed). `fastupdate` off: images
    arrive one at a time, seconds apart, and a pending list (which every search reads
    through until a vacuum merges it) made a search of 100,000 images take ten times
    as long.
  - SQLite: an FTS5 trigram table `image_search` over `image_search_docs` (one row per
    image: its id, owner and both prompts on two lines), kept in step with `images` by
    triggers; `detail=none`, so LIKE on the few documents it names decides a match.
    Where FTS5 or the trigram tokenizer is missing the tables are not made, and search
    falls back to LIKE with a warning.

None of the search objects are in the SQLAlchemy models; `memory.db.is_search_object`
names them for schema comparisons. A later migration that rebuilds `images` on SQLite
(batch mode) drops its triggers and must create them again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-12 09:00:00.000000
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

from core.logging_setup import get_logger

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

log = get_logger(__name__)

_BACKFILL_PAGE = 2_000

# ----------------------------------------------------------------- the columns

# A copy of memory/image_facets.py as it was at this revision.
_STYLE_MAX = 64
_LORA_NAMES_MAX = 512


def _style_of(parameters: Any) -> str | None:
    lineage = parameters.get("lineage") if isinstance(parameters, dict) else None
    style = lineage.get("style") if isinstance(lineage, dict) else None
    if not isinstance(style, str) or not style.strip():
        return None
    return style.strip()[:_STYLE_MAX]


def _lora_names_of(parameters: Any) -> str | None:
    if not isinstance(parameters, dict):
        return None
    request = parameters.get("request")
    entries = request.get("loras") if isinstance(request, dict) else None
    if not entries:
        entries = parameters.get("loras")
    names: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            entry = entry.get("name")
        elif isinstance(entry, list | tuple) and entry:
            entry = entry[0]
        if isinstance(entry, str):
            name = entry.strip().lower().replace("|", "")
            if name and name not in names:
                names.append(name)
    joined = "|"
    for name in names:
        if len(joined) + len(name) + 1 > _LORA_NAMES_MAX:
            break
        joined += name + "|"
    return joined if joined != "|" else None


_IMAGES = sa.table(
    "images",
    sa.column("id", sa.String()),
    sa.column("parameters", sa.JSON()),
    sa.column("style", sa.String()),
    sa.column("lora_names", sa.String()),
)


def _backfill(bind: sa.Connection) -> None:
    """Fill style and lora_names of every image, a page (by id) at a time."""
    after = ""
    update = (
        _IMAGES.update()
        .where(_IMAGES.c.id == sa.bindparam("row_id"))
        .values(style=sa.bindparam("style"), lora_names=sa.bindparam("lora_names"))
    )
    while True:
        rows = bind.execute(
            sa.select(_IMAGES.c.id, _IMAGES.c.parameters)
            .where(_IMAGES.c.id > after)
            .order_by(_IMAGES.c.id)
            .limit(_BACKFILL_PAGE)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        changes = [
            {"row_id": row.id, "style": style, "lora_names": loras}
            for row in rows
            for style, loras in [(_style_of(row.parameters), _lora_names_of(row.parameters))]
            if style or loras
        ]
        if changes:
            bind.execute(update, changes)


# -------------------------------------------------------------------- PostgreSQL

_PG_INDEXES = {
    "ix_images_prompt_typed_trgm": "prompt_typed",
    "ix_images_prompt_sent_trgm": "prompt_sent",
}


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
            effect="gallery prompt search works, unindexed; create the extension and rerun "
            "0013's CREATE INDEX statements to index it",
        )
        return None
    savepoint.commit()
    return bind.scalar(find)


def _postgres_upgrade(bind: sa.Connection) -> None:
    schema = _trigram_schema(bind)
    if schema is None:
        return
    for name, column in _PG_INDEXES.items():
        op.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON images "
            f'USING gin ({column} "{schema}".gin_trgm_ops) WITH (fastupdate = off)'
        )


def _postgres_downgrade() -> None:
    for name in _PG_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")


# ------------------------------------------------------------------------ SQLite

# Forgetting an image's document first also clears one left behind by a row removed
# without its delete trigger (REPLACE, or a delete with foreign keys off).
_FORGET_OLD = """
        INSERT INTO image_search (image_search, rowid, text)
        SELECT 'delete', id, text FROM image_search_docs WHERE image_id = {row}.id;
        DELETE FROM image_search_docs WHERE image_id = {row}.id;"""

_REMEMBER_NEW = """
        INSERT INTO image_search_docs (image_id, user_id, text)
        VALUES (new.id, new.user_id, new.prompt_typed || char(10) || new.prompt_sent);
        INSERT INTO image_search (rowid, text)
        SELECT id, text FROM image_search_docs WHERE image_id = new.id;"""

_SQLITE_TRIGGERS = (
    f"""
    CREATE TRIGGER images_search_insert AFTER INSERT ON images
    BEGIN{_FORGET_OLD.format(row="new")}{_REMEMBER_NEW}
    END
    """,
    f"""
    CREATE TRIGGER images_search_delete AFTER DELETE ON images
    BEGIN{_FORGET_OLD.format(row="old")}
    END
    """,
    # Keeping or renaming an image's thread does not touch the index; only what it holds.
    f"""
    CREATE TRIGGER images_search_update AFTER UPDATE OF prompt_typed, prompt_sent, user_id
    ON images
    WHEN old.prompt_typed IS NOT new.prompt_typed OR old.prompt_sent IS NOT new.prompt_sent
        OR old.user_id IS NOT new.user_id
    BEGIN{_FORGET_OLD.format(row="old")}{_REMEMBER_NEW}
    END
    """,
)
_SQLITE_TRIGGER_NAMES = ("images_search_insert", "images_search_delete", "images_search_update")


def _sqlite_has_trigram_fts(bind: sa.Connection) -> bool:
    try:
        bind.exec_driver_sql(
            "CREATE VIRTUAL TABLE temp.image_search_probe USING fts5(x, tokenize='trigram')"
        )
    except sa.exc.OperationalError as exc:
        log.warning(
            "search_index_skipped",
            database="sqlite",
            sqlite_version=bind.exec_driver_sql("SELECT sqlite_version()").scalar(),
            reason=f"no FTS5 trigram tokenizer (needs SQLite 3.34+ with FTS5): {exc.orig}",
            effect="gallery prompt search works, unindexed (LIKE)",
        )
        return False
    bind.exec_driver_sql("DROP TABLE temp.image_search_probe")
    return True


def _sqlite_upgrade(bind: sa.Connection) -> None:
    if not _sqlite_has_trigram_fts(bind):
        return
    op.execute(
        """
        CREATE TABLE image_search_docs (
            id INTEGER PRIMARY KEY,
            image_id VARCHAR(36) NOT NULL UNIQUE,
            user_id VARCHAR(36),
            text TEXT NOT NULL
        )
        """
    )
    op.execute(
        "CREATE VIRTUAL TABLE image_search USING fts5(text, content='image_search_docs', "
        "content_rowid='id', tokenize='trigram', detail='none')"
    )
    op.execute(
        "INSERT INTO image_search_docs (image_id, user_id, text) "
        "SELECT id, user_id, prompt_typed || char(10) || prompt_sent FROM images "
        "ORDER BY created_at"
    )
    op.execute("INSERT INTO image_search (image_search) VALUES ('rebuild')")
    for trigger in _SQLITE_TRIGGERS:
        op.execute(trigger)


def _sqlite_downgrade() -> None:
    for trigger in _SQLITE_TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS image_search")
    op.execute("DROP TABLE IF EXISTS image_search_docs")


# ---------------------------------------------------------------------- revision


def upgrade() -> None:
    bind = op.get_bind()
    op.add_column("images", sa.Column("style", sa.String(length=64), nullable=True))
    op.add_column("images", sa.Column("lora_names", sa.String(length=512), nullable=True))
    _backfill(bind)
    op.create_index("ix_images_user_created", "images", ["user_id", "created_at", "id"])
    op.create_index("ix_videos_user_created", "videos", ["user_id", "created_at", "id"])
    op.create_table(
        "image_embeddings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_image_embeddings_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_image_embeddings")),
        sa.UniqueConstraint("image_id", name=op.f("uq_image_embeddings_image_id")),
        # Ids are never reused after a delete: the likeness cache reads "rows after N".
        sqlite_autoincrement=True,
    )
    op.create_index("ix_image_embeddings_user_id", "image_embeddings", ["user_id"])
    op.create_index(
        "ix_image_embeddings_user_model_id", "image_embeddings", ["user_id", "model", "id"]
    )
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
    op.drop_index("ix_image_embeddings_user_model_id", table_name="image_embeddings")
    op.drop_index("ix_image_embeddings_user_id", table_name="image_embeddings")
    op.drop_table("image_embeddings")
    op.drop_index("ix_videos_user_created", table_name="videos")
    op.drop_index("ix_images_user_created", table_name="images")
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("lora_names")
        batch_op.drop_column("style")
