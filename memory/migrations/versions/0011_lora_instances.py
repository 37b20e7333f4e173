"""lora instances: a training names the process that runs it, so a crash is told apart

`loras.instance_id` is the app process (`app_instances.id`) running the training. A
process's start-up marks interrupted only the queued/running trainings whose process is
dead (the rule the ledger's reservations follow), no longer those of another live
process sharing the database. Trainings made before this revision have no process: any
start-up marks them interrupted, as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("loras", schema=None) as batch_op:
        batch_op.add_column(sa.Column("instance_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("loras", schema=None) as batch_op:
        batch_op.drop_column("instance_id")
