"""image cost as exact money: images.cost_usd Float -> Numeric(12, 6)

Videos and the ledger already keep dollars as Numeric(12, 6); an image's share was a
float. Each stored float is rewritten as the decimal it was meant to be (its shortest
repr), rounded half-up to six places, so a read gives the exact Decimal on SQLite (which
keeps REAL either way) and on PostgreSQL alike.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00.000000
"""

from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_MICRO = Decimal("0.000001")


def _images(cost_type: sa.types.TypeEngine) -> sa.Table:
    return sa.table("images", sa.column("id", sa.String()), sa.column("cost_usd", cost_type))


def upgrade() -> None:
    bind = op.get_bind()
    before = _images(sa.Float())
    rows = bind.execute(
        sa.select(before.c.id, before.c.cost_usd).where(before.c.cost_usd.is_not(None))
    ).all()
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.alter_column(
            "cost_usd",
            existing_type=sa.Float(),
            type_=sa.Numeric(precision=12, scale=6),
            existing_nullable=True,
        )
    after = _images(sa.Numeric(precision=12, scale=6))
    exact = [
        {"row_id": row_id, "cost": Decimal(repr(cost)).quantize(_MICRO, rounding=ROUND_HALF_UP)}
        for row_id, cost in rows
    ]
    if exact:
        bind.execute(
            after.update()
            .where(after.c.id == sa.bindparam("row_id"))
            .values(cost_usd=sa.bindparam("cost")),
            exact,
        )


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.alter_column(
            "cost_usd",
            existing_type=sa.Numeric(precision=12, scale=6),
            type_=sa.Float(),
            existing_nullable=True,
        )
