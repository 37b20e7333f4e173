"""The jobs API's jobs: durable state, scoped to their owner, and the webhook key nonce.

A job is created `queued`, moves to `running` (with progress) and ends `succeeded`,
`failed` or `cancelled`; a final state is never changed again (each update says
`status IN ACTIVE`), so a cancel racing the job's end cannot undo either. Every read a
user can ask for is scoped to the user: another user's job id is "not found", worded as
one that does not exist.

A job names the app process running it (`instance_id`); `mark_interrupted` fails the
active jobs of processes that died (at start-up, and on every heartbeat), so a client
polling a job never waits forever on one nobody runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import NotFound
from memory.db import write_transaction
from memory.ids import is_uuid, require_uuid
from memory.models import ApiJob, ApiWebhookKey, new_id, utcnow

KINDS = ("image", "batch", "video", "training")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
INTERRUPTED = (
    "The app restarted while this job ran, so it was stopped. Whatever it had already "
    "made is kept in your history; create the job again to retry."
)


@dataclass(frozen=True)
class ApiJobRecord:
    id: str
    user_id: str
    token_id: str | None
    kind: str
    status: str
    request: dict[str, Any]
    thread_id: str | None
    progress_done: int
    progress_total: int
    progress_note: str | None
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    cancel_requested: bool
    webhook_url: str | None
    webhook_status: str | None
    instance_id: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> ApiJobRecord:
        values = {field.name: getattr(row, field.name) for field in fields(cls)}
        for name, value in values.items():
            if isinstance(value, datetime) and value.tzinfo is None:
                values[name] = value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        values["request"] = dict(row.request or {})
        values["cancel_requested"] = bool(row.cancel_requested)
        return cls(**values)

    @property
    def final(self) -> bool:
        return self.status in FINAL


class ApiJobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        *,
        user_id: str,
        token_id: str | None,
        kind: str,
        request: dict[str, Any],
        webhook_url: str | None,
        instance_id: str | None,
    ) -> ApiJobRecord:
        if kind not in KINDS:
            raise ValueError(f"unknown job kind {kind!r}")
        now = utcnow()
        row = {
            "id": new_id(),
            "user_id": user_id,
            "token_id": token_id,
            "kind": kind,
            "status": "queued",
            "request": request,
            "thread_id": None,
            "progress_done": 0,
            "progress_total": 0,
            "progress_note": None,
            "result": None,
            "error_code": None,
            "error_message": None,
            "cancel_requested": False,
            "webhook_url": webhook_url,
            "webhook_status": "pending" if webhook_url else None,
            "instance_id": instance_id,
            "created_at": now,
            "updated_at": now,
            "started_at": None,
            "finished_at": None,
        }
        async with write_transaction(self._engine) as conn:
            await conn.execute(insert(ApiJob).values(**row))
        return ApiJobRecord(**row)

    async def get(self, job_id: str, user_id: str) -> ApiJobRecord:
        """The user's job; NotFound for another user's, a missing one or a malformed id."""
        if not is_uuid(job_id):
            raise _not_found()
        job_id = require_uuid(job_id)
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ApiJob).where(ApiJob.id == job_id, ApiJob.user_id == user_id)
                )
            ).one_or_none()
        if row is None:
            raise _not_found()
        return ApiJobRecord.from_row(row)

    async def get_any(self, job_id: str) -> ApiJobRecord:
        """For the runner, which already holds the job it runs."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(ApiJob).where(ApiJob.id == job_id))).one()
        return ApiJobRecord.from_row(row)

    async def for_user(
        self,
        user_id: str,
        *,
        limit: int = 20,
        before: datetime | None = None,
        status: str | None = None,
    ) -> list[ApiJobRecord]:
        """The user's jobs, newest first; `before` pages on (created before that time)."""
        query = select(ApiJob).where(ApiJob.user_id == user_id)
        if before is not None:
            query = query.where(ApiJob.created_at < before)
        if status is not None:
            query = query.where(ApiJob.status == status)
        query = query.order_by(ApiJob.created_at.desc(), ApiJob.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [ApiJobRecord.from_row(row) for row in rows]

    async def started(self, job_id: str, *, thread_id: str | None) -> bool:
        """queued -> running; False when it was cancelled before it could start."""
        now = utcnow()
        return await self._update(
            job_id,
            ("queued",),
            status="running",
            thread_id=thread_id,
            started_at=now,
        )

    async def progress(self, job_id: str, done: int, total: int, note: str | None) -> None:
        await self._update(
            job_id,
            ("running",),
            progress_done=max(0, done),
            progress_total=max(0, total),
            progress_note=(note or None) and note[:500],
        )

    async def set_thread(self, job_id: str, thread_id: str) -> None:
        await self._update(job_id, ACTIVE, thread_id=thread_id)

    async def finish(
        self,
        job_id: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> bool:
        """Active -> `status` (final); False when the job had already ended."""
        if status not in FINAL:
            raise ValueError(f"{status!r} is not a final state")
        return await self._update(
            job_id,
            ACTIVE,
            status=status,
            result=result,
            error_code=error_code,
            error_message=error_message,
            finished_at=utcnow(),
        )

    async def request_cancel(self, job_id: str, user_id: str) -> ApiJobRecord:
        """Mark the user's active job for cancelling (the runner stops it); a finished
        job is returned as it is. NotFound for another user's."""
        record = await self.get(job_id, user_id)
        if record.final:
            return record
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(ApiJob)
                .where(ApiJob.id == record.id, ApiJob.status.in_(ACTIVE))
                .values(cancel_requested=True, updated_at=utcnow())
            )
        return await self.get(job_id, user_id)

    async def set_webhook_status(self, job_id: str, status: str) -> None:
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(ApiJob).where(ApiJob.id == job_id).values(webhook_status=status)
            )

    async def mark_interrupted(self, alive: Select[tuple[str]] | None = None) -> list[str]:
        """Fail the active jobs of processes that died; returns their ids.

        As `LoraStore.mark_interrupted`: a job naming a live process (among `alive`)
        keeps running; one naming no process, or without `alive` at all, is failed.
        """
        dead_owner = ApiJob.instance_id.is_(None)
        if alive is not None:
            dead_owner = or_(dead_owner, ApiJob.instance_id.not_in(alive.scalar_subquery()))
        async with write_transaction(self._engine) as conn:
            ids = list(
                (
                    await conn.execute(
                        update(ApiJob)
                        .where(ApiJob.status.in_(ACTIVE), dead_owner)
                        .values(
                            status="failed",
                            error_code="interrupted",
                            error_message=INTERRUPTED,
                            finished_at=utcnow(),
                            updated_at=utcnow(),
                        )
                        .returning(ApiJob.id)
                    )
                ).scalars()
            )
        return ids

    # -- webhook key ------------------------------------------------------------------

    async def new_webhook_nonce(self, user_id: str) -> str:
        """A fresh nonce for the user (replacing any earlier one: the old secret stops
        verifying at once); the secret is derived from it by the caller."""
        nonce = secrets.token_hex(32)
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                ApiWebhookKey.__table__.delete().where(ApiWebhookKey.user_id == user_id)
            )
            await conn.execute(
                insert(ApiWebhookKey).values(user_id=user_id, nonce=nonce, created_at=utcnow())
            )
        return nonce

    async def webhook_nonce(self, user_id: str) -> tuple[str, datetime] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(ApiWebhookKey.nonce, ApiWebhookKey.created_at).where(
                        ApiWebhookKey.user_id == user_id
                    )
                )
            ).one_or_none()
        if row is None:
            return None
        created = row.created_at
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return row.nonce, created

    async def _update(self, job_id: str, states: tuple[str, ...], **values: Any) -> bool:
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(ApiJob)
                .where(ApiJob.id == job_id, ApiJob.status.in_(states))
                .values(**values, updated_at=utcnow())
            )
        return bool(result.rowcount)


def _not_found() -> NotFound:
    return NotFound("No such job: check the id (jobs are only visible to their owner).")
