"""app instances: each process owns its reservations, so a crash releases them at once

`app_instances` keeps one row per running app process with its heartbeat; a ledger
entry names the process that holds it (`instance_id`). An entry released because its
process died is marked `interrupted_at`, and `told_at` once its user has been told.
Entries made before this revision have no instance: the old age-based sweep still
releases them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "app_instances",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("machine", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_app_instances")),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("interrupted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("told_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_ledger_entries_status_instance", ["status", "instance_id"], unique=False
        )
        batch_op.create_index(
            "ix_ledger_entries_interrupted_told", ["interrupted_at", "told_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_entries_interrupted_told")
        batch_op.drop_index("ix_ledger_entries_status_instance")
        batch_op.drop_column("told_at")
        batch_op.drop_column("interrupted_at")
        batch_op.drop_column("instance_id")

    op.drop_table("app_instances")
