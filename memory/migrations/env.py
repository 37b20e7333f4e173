"""Alembic environment: runs on the connection that memory.db.migrate hands over."""

from alembic import context

from memory.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only for `alembic` on the command line
    raise SystemExit("Run migrations through memory.db.migrate (atelier run does it).")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
