"""threads by activity: the sidebar lists a user's conversations by their last message

`threads.updated_at` is stamped by every step write; the sidebar orders and pages by
(updated_at, id) within one user, so it needs that index, as it had for creation.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 08:40:00.000000
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_threads_user_updated", "threads", ["user_id", "updated_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_threads_user_updated", table_name="threads")
