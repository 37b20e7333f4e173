"""api_jobs and api_webhook_keys: the jobs API's durable state and webhook signing keys

- `api_jobs`: one job asked for over /api/v1/jobs (an image, a batch, a video or a
  training): its owner, the token that asked, its request, state (queued, running,
  succeeded, failed, cancelled), progress, results, error, optional webhook and its
  delivery, and the app process running it (`instance_id`), so a job whose process died
  is marked failed at the next start-up or heartbeat.
- `api_webhook_keys`: per user, the random nonce the webhook signing secret is derived
  from (HMAC of the app's secret); the secret itself is never stored.

Revision ID: 0016_api_jobs
Revises: 0015_api_tokens
Create Date: 2026-12-20 10:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0016_api_jobs"
down_revision = "0015_api_tokens"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _owner(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "api_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("token_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("thread_id", sa.String(length=36), nullable=True),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=False),
        sa.Column("progress_note", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_status", sa.String(length=16), nullable=True),
        sa.Column("instance_id", sa.String(length=36), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        _when("started_at", nullable=True),
        _when("finished_at", nullable=True),
        _owner("api_jobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_jobs")),
    )
    op.create_index("ix_api_jobs_user_created", "api_jobs", ["user_id", "created_at"])
    op.create_index("ix_api_jobs_status_instance", "api_jobs", ["status", "instance_id"])
    op.create_table(
        "api_webhook_keys",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        _when("created_at"),
        _owner("api_webhook_keys"),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_api_webhook_keys")),
    )


def downgrade() -> None:
    op.drop_table("api_webhook_keys")
    op.drop_index("ix_api_jobs_status_instance", table_name="api_jobs")
    op.drop_index("ix_api_jobs_user_created", table_name="api_jobs")
    op.drop_table("api_jobs")
