"""Batches: a list of items generated as one confirmed job that outlives its process.

A batch row holds how every item is made (`spec`) and who runs it (`instance_id`, an
app_instances id); one row per item holds what was sent, every attempt and how it ended.
Several app processes may share the database, so every step that hands out work is a
compare-and-set that only one caller can win:

- `next_pending` moves the lowest pending item to running only if it is still pending;
- `adopt` takes over a running or paused batch only while its process is not alive,
  judged inside the same statement, and puts its interrupted items back to pending;
- `set_status` moves a batch between states under a row lock (the write lock on SQLite).

Reads and status changes a user can ask for are scoped to the user: another user's
batch is "not found", with the same words as a batch that does not exist. The engine's
own writes (`update_item`, `add_attempt`, ...) take ids it got from those reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import InvalidInput, NotFound
from memory import media_claims
from memory.db import for_reads, session_factory, write_transaction
from memory.ids import require_uuid
from memory.images import ImageRecord
from memory.models import Batch, BatchItem, Image, new_id, utcnow
from memory.thread_rows import own_thread

STATUSES = ("running", "paused", "stopped", "done")
ACTIVE = ("running", "paused")  # a process runs it (or will, once resumed)
FINAL = ("stopped", "done")
ITEM_STATUSES = ("pending", "running", "done", "failed")
# Which status each status may move to; none leaves a final one.
_MOVES = {"running": ("paused", "stopped", "done"), "paused": ("running", "stopped")}
# What the engine may set on an item through `update_item`.
_ITEM_FIELDS = frozenset(
    {"status", "image_ids", "qc_score", "qc_passed", "error", "reservation_id", "seed"}
    | {"prompt_sent"}
)
_MICRO = Decimal("0.000001")
_TITLE_MAX, _LABEL_MAX = 200, 300


@dataclass(frozen=True)
class BatchRecord:
    id: str
    user_id: str
    thread_id: str
    schedule_id: str | None
    message_id: str | None
    title: str
    status: str  # running | paused | stopped | done
    stop_reason: str | None
    spec: dict[str, Any]
    estimate_usd: Decimal
    item_count: int
    instance_id: str | None  # the app process running it; None while none does
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    told_at: datetime | None  # when its final summary was shown in its conversation

    @classmethod
    def from_row(cls, row: Any) -> BatchRecord:
        values = _values(cls, row)
        values["spec"] = dict(row.spec or {})
        values["estimate_usd"] = _dec(row.estimate_usd)
        return cls(**values)


@dataclass(frozen=True)
class BatchItemRecord:
    id: str
    batch_id: str
    position: int  # 0-based, in the user's order
    label: str  # the object as the user wrote it
    prompt_sent: str
    template: str | None
    style: str | None
    size: str | None
    count: int  # images per item
    seed: int | None
    status: str  # pending | running | done | failed
    attempts: list[dict[str, Any]]
    image_ids: list[str]  # the final attempt's images
    qc_score: float | None
    qc_passed: bool | None
    cost_usd: Decimal  # all attempts' settled cost
    reservation_id: str | None  # the ledger entry of the attempt in flight
    error: str | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> BatchItemRecord:
        values = _values(cls, row)
        values["attempts"] = [dict(a) for a in row.attempts or []]
        values["image_ids"] = list(row.image_ids or [])
        values["cost_usd"] = _dec(row.cost_usd)
        return cls(**values)


@dataclass(frozen=True)
class NewBatchItem:
    label: str
    prompt_sent: str
    template: str | None = None
    style: str | None = None
    size: str | None = None
    count: int = 1
    seed: int | None = None


class BatchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = for_reads(engine)  # the heartbeat's sweep
        self._sessions = session_factory(engine)
        self._insert = media_claims.insert_for(engine)

    # ------------------------------------------------------------ the user's batches

    async def create(
        self,
        *,
        user_id: str,
        thread_id: str,
        title: str,
        spec: dict[str, Any],
        items: Sequence[NewBatchItem],
        estimate_usd: Decimal,
        instance_id: str | None,
        schedule_id: str | None = None,
        message_id: str | None = None,
    ) -> BatchRecord:
        """A running batch and its pending items, in one transaction.

        The conversation is the user's (created for them if it is not stored yet, as
        an image's is); someone else's is not found.
        """
        user_id = require_uuid(user_id, "user id")
        thread_id = require_uuid(thread_id, "thread id")
        if not isinstance(title, str) or not title.strip() or len(title) > _TITLE_MAX:
            raise InvalidInput(f"Invalid batch title: expected 1 to {_TITLE_MAX} characters.")
        if not items:
            raise InvalidInput("A batch needs at least one item.")
        if not isinstance(estimate_usd, Decimal):
            raise TypeError(f"estimate_usd must be a Decimal, not {type(estimate_usd).__name__}.")
        if not estimate_usd.is_finite() or estimate_usd < 0:
            raise InvalidInput(f"Invalid batch estimate {estimate_usd}: expected $0 or more.")
        now = utcnow()
        batch = {
            "id": new_id(),
            "user_id": user_id,
            "thread_id": thread_id,
            "schedule_id": require_uuid(schedule_id, "schedule id") if schedule_id else None,
            "message_id": require_uuid(message_id, "message id") if message_id else None,
            "title": title,
            "status": "running",
            "stop_reason": None,
            "spec": dict(spec),
            "estimate_usd": estimate_usd.quantize(_MICRO),
            "item_count": len(items),
            "instance_id": instance_id,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "told_at": None,
        }
        rows = [_item_row(batch["id"], position, item, now) for position, item in enumerate(items)]
        async with write_transaction(self._engine) as conn:
            await own_thread(conn, self._insert, thread_id=thread_id, user_id=user_id, at=now)
            await conn.execute(insert(Batch).values(**batch))
            await conn.execute(insert(BatchItem), rows)
        return BatchRecord(**batch)

    async def get_any(self, batch_id: str) -> BatchRecord:
        """The batch whoever owns it: the engine's own work (adopting one a dead process
        left), never what a user asks for, which always goes through `get`."""
        batch_id = require_uuid(batch_id, "batch id")
        found = await self._list(Batch.id == batch_id)
        if not found:
            raise _not_found(batch_id)
        return found[0]

    async def get(self, batch_id: str, user_id: str) -> BatchRecord:
        batch_id = require_uuid(batch_id, "batch id")
        found = await self._list(Batch.id == batch_id, Batch.user_id == user_id)
        if not found:
            raise _not_found(batch_id)
        return found[0]

    async def items(self, batch_id: str, user_id: str) -> list[BatchItemRecord]:
        """The batch's items in the user's order."""
        batch = await self.get(batch_id, user_id)
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(BatchItem)
                    .where(BatchItem.batch_id == batch.id)
                    .order_by(BatchItem.position)
                )
            ).all()
        return [BatchItemRecord.from_row(row) for row in rows]

    async def for_user(self, user_id: str, limit: int = 20) -> list[BatchRecord]:
        """The user's batches, newest first."""
        return await self._list(Batch.user_id == user_id, limit=limit)

    async def for_thread(self, thread_id: str, user_id: str) -> list[BatchRecord]:
        """The user's batches in one conversation, newest first."""
        thread_id = require_uuid(thread_id, "thread id")
        return await self._list(Batch.user_id == user_id, Batch.thread_id == thread_id)

    async def counts(self, batch_id: str) -> dict[str, int]:
        """How many of the batch's items are in each status (every status present)."""
        batch_id = require_uuid(batch_id, "batch id")
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(BatchItem.status, func.count())
                    .where(BatchItem.batch_id == batch_id)
                    .group_by(BatchItem.status)
                )
            ).all()
        counts = dict.fromkeys(ITEM_STATUSES, 0)
        counts.update({status: int(n) for status, n in rows})
        return counts

    async def set_status(
        self, batch_id: str, user_id: str, status: str, *, reason: str | None = None
    ) -> BatchRecord:
        """Pause, resume, stop or finish the user's batch.

        running ⇄ paused, running | paused → stopped, running → done; a stopped or done
        batch stays so. Stopping or finishing ends the process's hold (`instance_id`).
        The row is locked while the move is checked, so two callers cannot both move it.
        """
        if status not in STATUSES:
            raise InvalidInput(f"Invalid batch status {status!r}: expected one of {STATUSES}.")
        batch_id = require_uuid(batch_id, "batch id")
        now = utcnow()
        async with write_transaction(self._engine) as conn:
            current = await conn.scalar(
                select(Batch.status)
                .where(Batch.id == batch_id, Batch.user_id == user_id)
                .with_for_update()
            )
            if current is None:
                raise _not_found(batch_id)
            if current == status or current in FINAL:
                raise InvalidInput(f"Batch {batch_id} is already {current}.")
            if status not in _MOVES[current]:
                raise InvalidInput(
                    f"Batch {batch_id} is {current}: it can be "
                    f"{_words(_MOVES[current])}, not {status}."
                )
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if reason is not None:
                values["stop_reason"] = reason
            if status in FINAL:
                values.update(finished_at=now, instance_id=None)
            row = (
                await conn.execute(
                    update(Batch)
                    .where(Batch.id == batch_id)
                    .values(**values)
                    .returning(*Batch.__table__.c)
                )
            ).one()
        return BatchRecord.from_row(row)

    async def untold_finished(self, user_id: str, thread_id: str) -> list[BatchRecord]:
        """The conversation's stopped or done batches whose summary was not shown yet."""
        thread_id = require_uuid(thread_id, "thread id")
        return list(
            reversed(
                await self._list(
                    Batch.user_id == user_id,
                    Batch.thread_id == thread_id,
                    Batch.status.in_(FINAL),
                    Batch.told_at.is_(None),
                )
            )
        )

    async def untold_threads(self) -> set[str]:
        """Conversations with a stopped or done batch whose summary was not shown yet: a
        turn looks its batches up only when its conversation is among them."""
        async with self._reads.connect() as conn:
            rows = await conn.execute(
                select(Batch.thread_id)
                .where(Batch.status.in_(FINAL), Batch.told_at.is_(None))
                .distinct()
            )
            return {row.thread_id for row in rows}

    async def mark_told(self, batch_id: str) -> bool:
        """Mark the summary shown; False when another caller already did (show it once)."""
        batch_id = require_uuid(batch_id, "batch id")
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.told_at.is_(None))
                .values(told_at=utcnow())
            )
        return result.rowcount == 1

    # ------------------------------------------------------------- the engine's work

    async def next_pending(self, batch_id: str) -> BatchItemRecord | None:
        """The lowest pending item, now running; None when none is left.

        Compare-and-set on the item's status: when another process took the same item
        first, the next one is tried.
        """
        batch_id = require_uuid(batch_id, "batch id")
        async with write_transaction(self._engine) as conn:
            while True:
                item_id = await conn.scalar(
                    select(BatchItem.id)
                    .where(BatchItem.batch_id == batch_id, BatchItem.status == "pending")
                    .order_by(BatchItem.position)
                    .limit(1)
                )
                if item_id is None:
                    return None
                row = (
                    await conn.execute(
                        update(BatchItem)
                        .where(BatchItem.id == item_id, BatchItem.status == "pending")
                        .values(status="running", updated_at=utcnow())
                        .returning(*BatchItem.__table__.c)
                    )
                ).one_or_none()
                if row is not None:
                    return BatchItemRecord.from_row(row)

    async def update_item(self, item_id: str, **values: Any) -> None:
        """Set some of an item's fields (status, image_ids, qc_score, qc_passed, error,
        reservation_id, seed, prompt_sent)."""
        item_id = require_uuid(item_id, "batch item id")
        _check_item_values(values)
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id)
                .values(**values, updated_at=utcnow())
            )

    async def add_attempt(
        self, item_id: str, attempt: dict[str, Any], cost_usd: Decimal, **final: Any
    ) -> None:
        """Append one attempt to the item's record and add its cost, as one write.

        The row is read and written under its lock (the write lock on SQLite), so
        attempts recorded at the same time are all kept and all counted. `final` sets
        fields as `update_item` does, in the same write: the attempt that ends an item
        closes it too, so the common item costs one write here, not two.
        """
        item_id = require_uuid(item_id, "batch item id")
        _check_item_values(final)
        if not isinstance(cost_usd, Decimal) or not cost_usd.is_finite() or cost_usd < 0:
            raise InvalidInput(f"Invalid attempt cost {cost_usd!r}: expected a Decimal ≥ 0.")
        async with write_transaction(self._engine) as conn:
            row = (
                await conn.execute(
                    select(BatchItem.attempts, BatchItem.cost_usd)
                    .where(BatchItem.id == item_id)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"No batch item with id {item_id}.")
            await conn.execute(
                update(BatchItem)
                .where(BatchItem.id == item_id)
                .values(
                    attempts=[*(row.attempts or []), dict(attempt)],
                    cost_usd=(_dec(row.cost_usd) + cost_usd).quantize(_MICRO),
                    updated_at=utcnow(),
                    **final,
                )
            )

    async def adopt(self, alive: Select[tuple[str]], instance_id: str) -> list[str]:
        """Take over the running and paused batches no live process runs; their ids.

        A batch is taken when its `instance_id` is empty or names a process not among
        `alive` (AppInstances.alive(), evaluated inside this update), so of two
        processes adopting at once only one gets each batch. Its items left running
        go back to pending, keeping their attempts and the reservation of the attempt
        that was in flight (the engine settles or releases it).
        """
        dead_owner = or_(
            Batch.instance_id.is_(None),
            and_(
                Batch.instance_id != instance_id,
                Batch.instance_id.not_in(alive.scalar_subquery()),
            ),
        )
        now = utcnow()
        async with write_transaction(self._engine) as conn:
            adopted = list(
                (
                    await conn.scalars(
                        update(Batch)
                        .where(Batch.status.in_(ACTIVE), dead_owner)
                        .values(instance_id=instance_id, updated_at=now)
                        .returning(Batch.id)
                    )
                ).all()
            )
            if adopted:
                await conn.execute(
                    update(BatchItem)
                    .where(BatchItem.batch_id.in_(adopted), BatchItem.status == "running")
                    .values(status="pending", updated_at=now)
                )
        return adopted

    async def release(self, batch_id: str, *, instance_id: str | None = None) -> None:
        """This process no longer runs the batch (it shuts down): another may adopt it.

        With `instance_id`, only while that process still holds it.
        """
        batch_id = require_uuid(batch_id, "batch id")
        held = () if instance_id is None else (Batch.instance_id == instance_id,)
        async with write_transaction(self._engine) as conn:
            await conn.execute(
                update(Batch)
                .where(Batch.id == batch_id, *held)
                .values(instance_id=None, updated_at=utcnow())
            )

    async def stored_images(self, batch_id: str, item_id: str) -> list[ImageRecord]:
        """The images stored for one item of the batch (lineage `item_id`), oldest first.

        Found on resume: an image stored before a crash means its attempt succeeded and
        must not be paid for again.
        """
        batch_id = require_uuid(batch_id, "batch id")
        item_id = require_uuid(item_id, "batch item id")
        of_item = Image.parameters[("lineage", "item_id")].as_string() == item_id
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(Image)
                    .where(Image.batch_id == batch_id, of_item)
                    .order_by(Image.created_at, Image.id)
                )
            ).all()
        return [ImageRecord.from_row(row) for row in rows]

    # -------------------------------------------------------------------- helpers

    async def _list(self, *where: Any, limit: int | None = None) -> list[BatchRecord]:
        query = select(Batch).where(*where).order_by(Batch.created_at.desc(), Batch.id.desc())
        if limit is not None:
            query = query.limit(max(1, int(limit)))
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [BatchRecord.from_row(row) for row in rows]


def _item_row(batch_id: str, position: int, item: NewBatchItem, now: datetime) -> dict[str, Any]:
    label = item.label.strip() if isinstance(item.label, str) else ""
    if not label or len(label) > _LABEL_MAX:
        raise InvalidInput(
            f"Item {position + 1}: expected a label of 1 to {_LABEL_MAX} characters."
        )
    if not isinstance(item.count, int) or item.count < 1:
        raise InvalidInput(f"Item {position + 1} ({label}): count must be 1 or more.")
    return {
        "id": new_id(),
        "batch_id": batch_id,
        "position": position,
        "label": label,
        "prompt_sent": item.prompt_sent,
        "template": item.template,
        "style": item.style,
        "size": item.size,
        "count": item.count,
        "seed": item.seed,
        "status": "pending",
        "attempts": [],
        "image_ids": [],
        "qc_score": None,
        "qc_passed": None,
        "cost_usd": Decimal("0.000000"),
        "reservation_id": None,
        "error": None,
        "updated_at": now,
    }


def _values(cls: type, row: Any) -> dict[str, Any]:
    """A record's fields from a row, with times as aware UTC (SQLite hands back naive)."""
    values = {field.name: getattr(row, field.name) for field in fields(cls)}
    for name, value in values.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            values[name] = value.replace(tzinfo=UTC)
    return values


def _dec(value: Any) -> Decimal:
    if value is None:
        return Decimal("0.000000")
    if not isinstance(value, Decimal):
        value = Decimal(str(value))
    return value.quantize(_MICRO)


def _words(statuses: Sequence[str]) -> str:
    return ", ".join(statuses[:-1]) + " or " + statuses[-1] if len(statuses) > 1 else statuses[0]


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch with id {batch_id} in your account.")


def _check_item_values(values: dict[str, Any]) -> None:
    unknown = set(values) - _ITEM_FIELDS
    if unknown:
        raise ValueError(f"an item update cannot set {sorted(unknown)}")
    if "status" in values and values["status"] not in ITEM_STATUSES:
        raise ValueError(f"unknown batch item status {values['status']!r}")
