"""kept images: any image can be kept (starred), not only a curation's candidate

`images.kept_at` is when its owner pressed Keep on it (or typed /keep): the image's star,
shown on it in the chat and kept across reloads. NULL for every image made before this
revision and for any not kept.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-10 09:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kept_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_column("kept_at")
