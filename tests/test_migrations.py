"""Migrations against real databases: data made under an old schema survives the upgrade,
and the newest schema is exactly what the models declare.

Each test runs on SQLite and on the PostgreSQL server (db_fixtures' `db_url`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from memory.db import create_engine, is_search_object, migrate
from memory.images import ImageStore
from memory.media_store import MediaStore
from memory.models import Base
from tests.db_fixtures import db_url  # noqa: F401 - fixture

# The images table as revision 0006 left it: cost_usd a float.
_IMAGES_0006 = sa.table(
    "images",
    *[sa.column(name, sa.String()) for name in ("id", "thread_id", "user_id", "parent_id")],
    *[sa.column(name, sa.String()) for name in ("media_key", "mime", "prompt_typed")],
    *[sa.column(name, sa.String()) for name in ("prompt_sent", "backend", "model")],
    sa.column("parameters", sa.JSON()),
    sa.column("width", sa.Integer()),
    sa.column("height", sa.Integer()),
    sa.column("cost_usd", sa.Float()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_USERS = sa.table(
    "users",
    *[sa.column(name, sa.String()) for name in ("id", "identifier", "role")],
    sa.column("metadata", sa.JSON()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_THREADS = sa.table(
    "threads",
    sa.column("id", sa.String()),
    sa.column("user_id", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
_SCORES = sa.table(
    "image_scores",
    *[sa.column(name, sa.String()) for name in ("image_id", "criterion", "reason")],
    sa.column("value", sa.Float()),
    sa.column("score", sa.Float()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)

# float as stored before 0007 -> the exact amount read back after it (half-up, 6 places)
FLOAT_COSTS = {
    0.1 / 3: Decimal("0.033333"),  # a three-way share: 0.03333333333333333
    0.0000125: Decimal("0.000013"),  # a half: rounds up, though the binary float is below
    0.0400005: Decimal("0.040001"),
    0.07: Decimal("0.070000"),
    0.2 / 3 * 2: Decimal("0.133333"),
}


async def test_image_costs_stored_as_floats_read_back_as_exact_decimals(db_url, tmp_path):  # noqa: F811
    engine = create_engine(db_url)
    try:
        await migrate(engine, "0006")
        now = datetime.now(UTC)
        user_id, thread_id = str(uuid.uuid4()), str(uuid.uuid4())
        ids = {float_cost: str(uuid.uuid4()) for float_cost in FLOAT_COSTS}
        first = next(iter(ids.values()))
        async with engine.begin() as conn:
            await conn.execute(
                _USERS.insert().values(
                    id=user_id, identifier="eve", role="user", metadata={}, created_at=now
                )
            )
            await conn.execute(
                _THREADS.insert().values(
                    id=thread_id, user_id=user_id, created_at=now, updated_at=now
                )
            )
            for float_cost, image_id in ids.items():
                await conn.execute(
                    _IMAGES_0006.insert().values(
                        id=image_id,
                        thread_id=thread_id,
                        user_id=user_id,
                        parent_id=None if image_id == first else first,
                        media_key="0" * 64,
                        mime="image/png",
                        prompt_typed="a kite",
                        prompt_sent="a kite",
                        backend="openai",
                        model="gpt-image-2",
                        parameters={},
                        width=64,
                        height=64,
                        cost_usd=float_cost,
                        created_at=now,
                    )
                )
            await conn.execute(
                _SCORES.insert().values(
                    image_id=first,
                    criterion="clip",
                    reason="",
                    value=0.5,
                    score=0.5,
                    created_at=now,
                )
            )

        await migrate(engine)

        store = ImageStore(engine, MediaStore(tmp_path / "media"))
        for float_cost, image_id in ids.items():
            record = await store.get(image_id, user_id)
            assert isinstance(record.cost_usd, Decimal)
            assert record.cost_usd == FLOAT_COSTS[float_cost], float_cost
            # Rebuilding the table (SQLite) kept the lineage of every image.
            assert record.parent_id == (None if image_id == first else first)
        async with engine.connect() as conn:
            # ...and did not cascade into the tables that reference images.
            scores = await conn.scalar(sa.select(sa.func.count()).select_from(_SCORES))
        assert scores == 1
    finally:
        await engine.dispose()


async def test_the_migrated_schema_is_what_the_models_declare(db_url):  # noqa: F811
    """Everything but the search index (migration 0010), which SQLAlchemy models cannot
    declare: SQLite's FTS5 tables and PostgreSQL's trigram indexes (`is_search_object`)."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)

        def modelled(name: str | None, type_: str, parent_names: dict) -> bool:
            return not (type_ in ("table", "index") and is_search_object(name))

        def differences(connection: sa.Connection) -> list:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_name": modelled}
            )
            return compare_metadata(context, Base.metadata)

        async with engine.connect() as conn:
            assert await conn.run_sync(differences) == []
    finally:
        await engine.dispose()
