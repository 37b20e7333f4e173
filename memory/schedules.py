"""Schedules: batches that run by themselves, each due time fired exactly once.

Several app processes may share the database and each polls for due schedules, so a
due time is claimed, not just read: `claim` is one compare-and-set UPDATE that moves
`next_run_at` on only while it still holds the due time the caller saw. Whoever's
update matched runs that due time; everyone else gets None. No lock is held between
the poll and the claim, and a process that dies after claiming simply missed that run.

Each schedule has its own conversation ("Schedule: NAME" in its owner's sidebar) where
its runs land as batches. Deleting a schedule removes only its row: that conversation
and its images stay. Every read and change a user can ask for is scoped to the user;
another user's schedule is "not found", as one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import InvalidInput, NotFound
from memory.db import write_transaction
from memory.ids import require_uuid
from memory.models import Schedule, Thread, new_id, utcnow

KINDS = ("cron", "interval", "daily", "weekly")
STATUSES = ("active", "paused")
MISSED_POLICIES = ("run_once", "skip")
THREAD_PREFIX = "Schedule: "
_NAME_MAX, _EXPRESSION_MAX, _TIMEZONE_MAX = 120, 120, 64
_MICRO = Decimal("0.000001")


@dataclass(frozen=True)
class ScheduleRecord:
    id: str
    user_id: str
    thread_id: str  # its own conversation, where its runs land
    name: str
    kind: str  # cron | interval | daily | weekly
    expression: str  # as tools/schedule_times.py normalises it
    timezone: str
    prompt: str  # may contain {theme}
    themes: list[str]
    theme_index: int  # the theme the next run uses is themes[theme_index % len(themes)]
    count: int
    style: str | None
    backend: str | None
    size: str | None
    budget_usd: Decimal | None
    status: str  # active | paused
    missed_policy: str | None  # run_once | skip; None: the operator's setting
    next_run_at: datetime
    last_run_at: datetime | None
    last_batch_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> ScheduleRecord:
        values = {field.name: getattr(row, field.name) for field in fields(cls)}
        for name, value in values.items():
            if isinstance(value, datetime) and value.tzinfo is None:
                values[name] = value.replace(tzinfo=UTC)  # SQLite hands back naive UTC
        values["themes"] = list(row.themes or [])
        if row.budget_usd is not None:
            values["budget_usd"] = _dec(row.budget_usd)
        return cls(**values)


@dataclass(frozen=True)
class NewSchedule:
    name: str
    kind: str
    expression: str
    timezone: str
    prompt: str
    count: int
    next_run_at: datetime
    themes: list[str] | tuple[str, ...] = ()
    theme_index: int = 0
    style: str | None = None
    backend: str | None = None
    size: str | None = None
    budget_usd: Decimal | None = None
    status: str = "active"
    missed_policy: str | None = None


# What `update` may change; ids, times of runs and the thread stay the store's.
_CHANGEABLE = frozenset(
    {"name", "kind", "expression", "timezone", "prompt", "themes", "theme_index", "count"}
    | {"style", "backend", "size", "budget_usd", "status", "missed_policy", "next_run_at"}
)


class ScheduleStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, user_id: str, new: NewSchedule) -> ScheduleRecord:
        """The schedule and its own conversation ("Schedule: NAME"), in one transaction."""
        user_id = require_uuid(user_id, "user id")
        values = _checked({f.name: getattr(new, f.name) for f in fields(NewSchedule)})
        now = utcnow()
        thread_id = new_id()
        row = {
            **values,
            "id": new_id(),
            "user_id": user_id,
            "thread_id": thread_id,
            "last_run_at": None,
            "last_batch_id": None,
            "created_at": now,
            "updated_at": now,
        }
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                insert(Thread).values(
                    id=thread_id,
                    user_id=user_id,
                    name=_thread_name(values["name"]),
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(insert(Schedule).values(**row))
        return ScheduleRecord(**row)

    async def get(self, schedule_id: str, user_id: str) -> ScheduleRecord:
        schedule_id = require_uuid(schedule_id, "schedule id")
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(Schedule).where(Schedule.id == schedule_id, Schedule.user_id == user_id)
                )
            ).one_or_none()
        if row is None:
            raise _not_found(schedule_id)
        return ScheduleRecord.from_row(row)

    async def for_user(self, user_id: str) -> list[ScheduleRecord]:
        """The user's schedules, oldest first (the order they were made in)."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Schedule)
                    .where(Schedule.user_id == user_id)
                    .order_by(Schedule.created_at, Schedule.id)
                )
            ).all()
        return [ScheduleRecord.from_row(row) for row in rows]

    async def update(self, schedule_id: str, user_id: str, **changes: Any) -> ScheduleRecord:
        """Change some of the user's schedule's fields; a new name renames its conversation."""
        schedule_id = require_uuid(schedule_id, "schedule id")
        unknown = set(changes) - _CHANGEABLE
        if unknown:
            raise InvalidInput(
                f"A schedule's {', '.join(sorted(unknown))} cannot be changed; "
                f"these can: {', '.join(sorted(_CHANGEABLE))}."
            )
        values = _checked(changes)
        now = utcnow()
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    update(Schedule)
                    .where(Schedule.id == schedule_id, Schedule.user_id == user_id)
                    .values(**values, updated_at=now)
                    .returning(*Schedule.__table__.c)
                )
            ).one_or_none()
            if row is None:
                raise _not_found(schedule_id)
            if "name" in values:
                await conn.execute(
                    update(Thread)
                    .where(Thread.id == row.thread_id, Thread.user_id == user_id)
                    .values(name=_thread_name(values["name"]))
                )
        return ScheduleRecord.from_row(row)

    async def delete(self, schedule_id: str, user_id: str) -> None:
        """Remove the schedule; its conversation and the images it made stay."""
        schedule_id = require_uuid(schedule_id, "schedule id")
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                Schedule.__table__.delete().where(
                    Schedule.id == schedule_id, Schedule.user_id == user_id
                )
            )
        if result.rowcount != 1:
            raise _not_found(schedule_id)

    async def set_status(self, schedule_id: str, user_id: str, status: str) -> ScheduleRecord:
        """Pause or resume the user's schedule."""
        if status not in STATUSES:
            raise InvalidInput(f"Invalid schedule status {status!r}: expected one of {STATUSES}.")
        schedule_id = require_uuid(schedule_id, "schedule id")
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    update(Schedule)
                    .where(
                        Schedule.id == schedule_id,
                        Schedule.user_id == user_id,
                        Schedule.status != status,
                    )
                    .values(status=status, updated_at=utcnow())
                    .returning(*Schedule.__table__.c)
                )
            ).one_or_none()
            if row is None:
                current = await conn.scalar(
                    select(Schedule.status).where(
                        Schedule.id == schedule_id, Schedule.user_id == user_id
                    )
                )
                if current is None:
                    raise _not_found(schedule_id)
                raise InvalidInput(f"Schedule {schedule_id} is already {current}.")
        return ScheduleRecord.from_row(row)

    async def due(self, now: datetime) -> list[ScheduleRecord]:
        """Every user's active schedules due at `now`, the longest overdue first."""
        now = _utc(now, "now")
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Schedule)
                    .where(Schedule.status == "active", Schedule.next_run_at <= now)
                    .order_by(Schedule.next_run_at, Schedule.id)
                )
            ).all()
        return [ScheduleRecord.from_row(row) for row in rows]

    async def claim(
        self,
        schedule_id: str,
        *,
        due_at: datetime,
        next_run_at: datetime,
        now: datetime,
        advance_theme: bool = True,
    ) -> ScheduleRecord | None:
        """Claim the run due at `due_at`: the winner gets the schedule as claimed (with the
        theme index this run uses), everyone else None.

        One UPDATE that matches only while the schedule is active and still due at
        `due_at`; it moves `next_run_at` on, so no other claim of that due time matches.
        """
        schedule_id = require_uuid(schedule_id, "schedule id")
        due_at = _utc(due_at, "due_at")
        next_run_at = _utc(next_run_at, "next_run_at")
        now = _utc(now, "now")
        step = 1 if advance_theme else 0
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    update(Schedule)
                    .where(
                        Schedule.id == schedule_id,
                        Schedule.status == "active",
                        Schedule.next_run_at == due_at,
                    )
                    .values(
                        next_run_at=next_run_at,
                        last_run_at=now,
                        theme_index=Schedule.theme_index + step,
                        updated_at=now,
                    )
                    .returning(*Schedule.__table__.c)
                )
            ).one_or_none()
        if row is None:
            return None
        claimed = ScheduleRecord.from_row(row)
        return replace(claimed, theme_index=claimed.theme_index - step)

    async def set_last_batch(self, schedule_id: str, batch_id: str) -> None:
        schedule_id = require_uuid(schedule_id, "schedule id")
        batch_id = require_uuid(batch_id, "batch id")
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(Schedule)
                .where(Schedule.id == schedule_id)
                .values(last_batch_id=batch_id, updated_at=utcnow())
            )


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """The given fields validated, in the form they are stored."""
    out = dict(values)
    if "name" in out:
        out["name"] = _text(out["name"], "schedule name", _NAME_MAX)
    if "kind" in out and out["kind"] not in KINDS:
        raise InvalidInput(f"Invalid schedule kind {out['kind']!r}: expected one of {KINDS}.")
    if "expression" in out:
        out["expression"] = _text(out["expression"], "schedule time", _EXPRESSION_MAX)
    if "timezone" in out:
        out["timezone"] = _text(out["timezone"], "time zone", _TIMEZONE_MAX)
    if "prompt" in out:
        out["prompt"] = _text(out["prompt"], "schedule prompt", None)
    if "themes" in out:
        themes = out["themes"]
        if not isinstance(themes, list | tuple) or not all(
            isinstance(t, str) and t.strip() for t in themes
        ):
            raise InvalidInput("Themes must be a list of non-empty texts.")
        out["themes"] = [t.strip() for t in themes]
    if "count" in out and (not isinstance(out["count"], int) or out["count"] < 1):
        raise InvalidInput(f"Invalid image count {out['count']!r}: expected 1 or more.")
    if "theme_index" in out and (not isinstance(out["theme_index"], int) or out["theme_index"] < 0):
        raise InvalidInput(f"Invalid theme index {out['theme_index']!r}: expected 0 or more.")
    if "status" in out and out["status"] not in STATUSES:
        raise InvalidInput(f"Invalid schedule status {out['status']!r}: expected {STATUSES}.")
    if out.get("missed_policy") not in (None, *MISSED_POLICIES):
        raise InvalidInput(
            f"Invalid missed-run policy {out['missed_policy']!r}: expected one of "
            f"{MISSED_POLICIES}."
        )
    if out.get("budget_usd") is not None:
        budget = out["budget_usd"]
        if not isinstance(budget, Decimal) or not budget.is_finite() or budget <= 0:
            raise InvalidInput(f"Invalid schedule budget {budget!r}: expected an amount above $0.")
        out["budget_usd"] = budget.quantize(_MICRO)
    if "next_run_at" in out:
        out["next_run_at"] = _utc(out["next_run_at"], "next_run_at")
    return out


def _text(value: Any, what: str, max_length: int | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"Invalid {what}: it may not be empty.")
    value = value.strip()
    if max_length is not None and len(value) > max_length:
        raise InvalidInput(f"Invalid {what}: at most {max_length} characters.")
    return value


def _utc(value: Any, what: str) -> datetime:
    """Aware UTC: SQLite stores the wall time as given, so every time is stored in UTC."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} must be a timezone-aware datetime.")
    return value.astimezone(UTC)


def _thread_name(name: str) -> str:
    return THREAD_PREFIX + name


def _dec(value: Any) -> Decimal:
    if not isinstance(value, Decimal):
        value = Decimal(str(value))
    return value.quantize(_MICRO)


def _not_found(schedule_id: str) -> NotFound:
    return NotFound(f"No schedule with id {schedule_id} in your account.")
