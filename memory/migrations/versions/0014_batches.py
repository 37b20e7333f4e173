"""batches and schedules: lists of items run as one durable job, and recurring batches

- `batches`: one confirmed list, its spec, estimate, status and the app process running
  it (`instance_id`, NULL while none does, so a live process adopts it after a crash).
- `batch_items`: one object of a batch, with every attempt, its QC verdict and its cost.
- `schedules`: when a recurring batch runs next (claimed by compare-and-set on
  `next_run_at`, so two processes fire it once) and what it makes.
- `ledger_entries.batch_id` and `images.batch_id`: which batch a charge or an image
  belongs to (/cost's lines, the gallery's filter). NULL for everything before.

Adding the two columns is a plain ALTER TABLE ADD COLUMN on SQLite too (no table
rebuild), so 0013's search triggers on `images` stay as they are.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-14 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_MONEY = sa.Numeric(precision=12, scale=6)


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _owner_keys(table: str) -> list[sa.ForeignKeyConstraint]:
    return [
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.id"],
            name=op.f(f"fk_{table}_thread_id_threads"),
            ondelete="CASCADE",
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("thread_id", sa.String(length=36), nullable=False),
        sa.Column("schedule_id", sa.String(length=36), nullable=True),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.Text(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("estimate_usd", _MONEY, nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        _when("finished_at", nullable=True),
        _when("told_at", nullable=True),
        *_owner_keys("batches"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_user_created", "batches", ["user_id", "created_at"])
    op.create_index("ix_batches_status_instance", "batches", ["status", "instance_id"])
    op.create_index("ix_batches_schedule_id", "batches", ["schedule_id"])

    op.create_table(
        "batch_items",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("prompt_sent", sa.Text(), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=True),
        sa.Column("style", sa.String(length=64), nullable=True),
        sa.Column("size", sa.String(length=16), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("image_ids", sa.JSON(), nullable=False),
        sa.Column("qc_score", sa.Float(), nullable=True),
        sa.Column("qc_passed", sa.Boolean(), nullable=True),
        sa.Column("cost_usd", _MONEY, nullable=False),
        sa.Column("reservation_id", sa.String(length=36), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _when("updated_at"),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
            name=op.f("fk_batch_items_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_items")),
        sa.UniqueConstraint("batch_id", "position", name=op.f("uq_batch_items_batch_id_position")),
    )
    op.create_index("ix_batch_items_batch_status", "batch_items", ["batch_id", "status"])

    op.create_table(
        "schedules",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("thread_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("expression", sa.String(length=120), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("themes", sa.JSON(), nullable=False),
        sa.Column("theme_index", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("style", sa.String(length=64), nullable=True),
        sa.Column("backend", sa.String(length=200), nullable=True),
        sa.Column("size", sa.String(length=16), nullable=True),
        sa.Column("budget_usd", _MONEY, nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("missed_policy", sa.String(length=16), nullable=True),
        _when("next_run_at"),
        _when("last_run_at", nullable=True),
        sa.Column("last_batch_id", sa.String(length=36), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        *_owner_keys("schedules"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    op.create_index("ix_schedules_status_next_run", "schedules", ["status", "next_run_at"])
    op.create_index("ix_schedules_user_id", "schedules", ["user_id"])

    op.add_column("ledger_entries", sa.Column("batch_id", sa.String(length=36), nullable=True))
    op.create_index("ix_ledger_entries_batch_id", "ledger_entries", ["batch_id"])
    op.add_column("images", sa.Column("batch_id", sa.String(length=36), nullable=True))
    op.create_index("ix_images_batch_id", "images", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_images_batch_id", table_name="images")
    op.drop_index("ix_ledger_entries_batch_id", table_name="ledger_entries")
    # SQLite 3.35+ drops a column in place (no rebuild that would lose 0013's triggers).
    op.drop_column("images", "batch_id")
    op.drop_column("ledger_entries", "batch_id")
    op.drop_index("ix_schedules_user_id", table_name="schedules")
    op.drop_index("ix_schedules_status_next_run", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_batch_items_batch_status", table_name="batch_items")
    op.drop_table("batch_items")
    op.drop_index("ix_batches_schedule_id", table_name="batches")
    op.drop_index("ix_batches_status_instance", table_name="batches")
    op.drop_index("ix_batches_user_created", table_name="batches")
    op.drop_table("batches")
