"""The cost ledger, and the budgets it holds to.

Every paid action reserves its estimated cost before it runs, then settles with the
actual cost, or releases the reservation when it failed, was cancelled or was declined
(spending nothing). A budget counts settled costs plus open reservations, so requests
running side by side cannot together spend more than it allows.

That needs the check and the insert to be one step: each reservation runs in a
transaction that serialises against every other reservation in the same scope.

- PostgreSQL: a transaction-scoped advisory lock per scope (the conversation, and the
  user's UTC day), taken in a fixed order before anything is read. Under READ COMMITTED
  every later statement sees what the previous holder committed.
- SQLite: memory.db's write transaction, which holds the database's one write lock
  (`BEGIN IMMEDIATE`, taken in turn by the process's writers) before the sums are read.

Every read and write is scoped to the user, like image lineage.

Each reservation names the app process that holds it (`instance_id`, see
memory/instances.py). A process that dies mid-action never settles; once it is known
dead, any other process releases its reservations at once and marks them interrupted,
so its user can be told what was cut short (once: `told_at`).

Length: reserve, settle, release and the budget sums must agree on one locking and
scoping scheme per database; kept together so that scheme is read in one place.
"""

from __future__ import annotations

import functools
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core import money
from core.errors import AtelierError, InvalidInput, NotFound
from memory import csv_cells, media_claims
from memory.db import for_reads, write_transaction
from memory.ids import require_uuid
from memory.models import Batch, Budget, LedgerEntry, Schedule, new_id, utcnow
from memory.thread_rows import owner_query

SCOPES = ("thread", "user_day")
SETTERS = ("user", "operator")
# unknown: no price for the model and nothing charged (records from before the operator's
# ceiling); ceiling: no price for the model, charged at the operator's ceiling for it.
SOURCES = ("reported", "table", "estimate", "ceiling", "unknown")
UNPRICED_POLICIES = ("reserve", "refuse")
_MICRO = Decimal("0.000001")
_MAX_USD = Decimal("1000000")  # Numeric(12, 6) holds six digits before the point
_ZERO = Decimal("0.000000")
_SCOPE_WORDS = {"thread": "this conversation", "user_day": "today (UTC)"}


class BudgetExceeded(AtelierError):
    """The request would take a budget over its limit; nothing was reserved.

    The message gives the numbers, so the user can see how far over it would go and
    raise the budget, wait for the next day, or ask for something cheaper.
    """

    def __init__(self, usage: ScopeUsage, estimate_usd: Decimal) -> None:
        assert usage.limit_usd is not None
        who = "you" if usage.limit_set_by == "user" else "the operator"
        super().__init__(
            f"This would go over the budget for {_SCOPE_WORDS[usage.scope]}: "
            f"spent {money.usd(usage.spent_usd)}, reserved {money.usd(usage.reserved_usd)} for "
            f"requests still running, this request {money.usd(estimate_usd)}, "
            f"limit {money.usd(usage.limit_usd)} (set by {who})."
        )
        self.usage = usage
        self.estimate_usd = estimate_usd


@dataclass(frozen=True)
class OperatorLimits:
    """The operator's defaults (from settings) for every conversation and user-day.

    Budget rows the operator sets for one scope apply as well; the smallest limit holds.
    The confirmation threshold is only a default: a budget row's threshold replaces it.
    """

    thread_usd: Decimal | None = None
    user_day_usd: Decimal | None = None
    confirm_above_usd: Decimal | None = None
    # A model without a price: refused, or charged this ceiling per output (see
    # tools/spending.py), so it never runs at $0 against a budget.
    unpriced_policy: str = "reserve"
    unpriced_reserve_usd: Decimal = Decimal("0.50")

    def __post_init__(self) -> None:
        if self.unpriced_policy not in UNPRICED_POLICIES:
            raise ValueError(f"unpriced_policy must be one of {UNPRICED_POLICIES}")
        if not self.unpriced_reserve_usd > 0:
            raise ValueError("unpriced_reserve_usd must be above $0")

    def limit_for(self, scope: str) -> Decimal | None:
        return self.thread_usd if scope == "thread" else self.user_day_usd


@dataclass(frozen=True)
class ScopeUsage:
    """What one scope has spent and has in flight, against its effective limit."""

    scope: str  # thread | user_day
    spent_usd: Decimal  # settled actual costs
    reserved_usd: Decimal  # estimates of open reservations
    limit_usd: Decimal | None  # the smallest limit that applies, if any
    limit_set_by: str | None  # user | operator
    confirm_above_usd: Decimal | None  # the smallest threshold that applies, if any

    def would_exceed(self, estimate_usd: Decimal) -> bool:
        if self.limit_usd is None:
            return False
        return self.spent_usd + self.reserved_usd + estimate_usd > self.limit_usd


@dataclass(frozen=True)
class Reservation:
    """A ledger entry: a reservation, and what became of it."""

    id: str
    user_id: str
    thread_id: str
    image_id: str | None
    message_id: str | None
    backend: str
    model: str
    what: str
    estimate_usd: Decimal
    actual_usd: Decimal | None
    source: str | None
    status: str  # reserved | settled | released
    created_at: datetime
    settled_at: datetime | None  # when it was settled or released
    instance_id: str | None = None  # the app process holding it (memory/instances.py)
    interrupted_at: datetime | None = None  # released because that process died
    told_at: datetime | None = None  # when its user was told of the interruption
    batch_id: str | None = None  # the batch whose item this paid for

    @classmethod
    def from_row(cls, row: Any) -> Reservation:
        return cls(
            id=row.id,
            user_id=row.user_id,
            thread_id=row.thread_id,
            image_id=row.image_id,
            message_id=row.message_id,
            backend=row.backend,
            model=row.model,
            what=row.what,
            estimate_usd=_dec(row.estimate_usd),
            actual_usd=None if row.actual_usd is None else _dec(row.actual_usd),
            source=row.source,
            status=row.status,
            created_at=row.created_at,
            settled_at=row.settled_at,
            instance_id=row.instance_id,
            interrupted_at=row.interrupted_at,
            told_at=row.told_at,
            batch_id=row.batch_id,
        )


@dataclass(frozen=True)
class BudgetRecord:
    scope: str
    scope_id: str
    limit_usd: Decimal | None
    confirm_above_usd: Decimal | None
    set_by: str
    updated_at: datetime


@dataclass(frozen=True)
class CostRow:
    """One line of the /cost report: settled spending of one model on one UTC day."""

    day: date
    backend: str
    model: str
    usd: Decimal
    count: int
    unpriced: int = 0  # actions with no known price, not counted in usd
    at_ceiling: int = 0  # actions with no known price, counted in usd at the operator's ceiling


@dataclass(frozen=True)
class BatchCostRow:
    """One batch's settled spending over a report's days (/cost's "Batches" lines)."""

    batch_id: str
    title: str | None  # None: the batch's conversation (and so its row) was deleted
    schedule_id: str | None  # the schedule it ran for, if any
    schedule_name: str | None  # None also when that schedule was deleted since
    usd: Decimal
    count: int  # settled paid actions (attempts), priced or not


class Ledger:
    def __init__(self, engine: AsyncEngine, instance_id: str | None = None) -> None:
        self._engine = engine
        self._reads = for_reads(engine)  # reads of one statement, asked on every paid action
        self._insert = media_claims.insert_for(engine)
        # The app process whose reservations these are (Runtime.start sets it once the
        # process is registered); None leaves them to the age-based sweep.
        self.instance_id = instance_id

    @asynccontextmanager
    async def _serialised(self, *keys: str) -> AsyncIterator[AsyncConnection]:
        """A transaction that no other reservation in the same scopes runs alongside."""
        async with write_transaction(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                # A fixed order, so two reservations sharing scopes cannot deadlock.
                # One statement; PostgreSQL evaluates a select list left to right.
                ordered = sorted(set(keys))
                params = {f"key{i}": key for i, key in enumerate(ordered)}
                await conn.execute(_advisory_locks_query(len(ordered)), params)
            # SQLite: the write transaction already holds the one write lock.
            yield conn

    async def reserve(
        self,
        *,
        user_id: str,
        thread_id: str,
        backend: str,
        model: str,
        what: str,
        estimate_usd: Decimal,
        operator_limits: OperatorLimits | None = None,
        message_id: str | None = None,
        batch_id: str | None = None,
        now: datetime | None = None,
    ) -> Reservation:
        """Reserve `estimate_usd` for a paid action, or raise BudgetExceeded.

        The sums, the limits and the insert are read and written under the scopes' lock,
        so concurrent reservations are admitted one at a time against up-to-date sums.
        """
        user_id = require_uuid(user_id, "user id")
        thread_id = require_uuid(thread_id, "thread id")
        if message_id is not None:
            message_id = require_uuid(message_id, "message id")
        if batch_id is not None:
            batch_id = require_uuid(batch_id, "batch id")
        estimate = _money(estimate_usd, "estimate_usd")
        when = _utc(now)
        values = {
            "id": new_id(),
            "user_id": user_id,
            "thread_id": thread_id,
            "message_id": message_id,
            "backend": _label(backend, "backend", 64),
            "model": _label(model, "model", 128),
            "what": _label(what, "what", 32),
            "estimate_usd": estimate,
            "status": "reserved",
            "created_at": when,
            "instance_id": self.instance_id,
            "batch_id": batch_id,
        }
        day = when.date().isoformat()
        async with self._serialised(
            f"atelier.ledger:thread:{thread_id}", f"atelier.ledger:user_day:{user_id}:{day}"
        ) as conn:
            for usage in await _usage(conn, user_id, thread_id, when, operator_limits):
                if usage.would_exceed(estimate):
                    raise BudgetExceeded(usage, estimate)
            await conn.execute(_insert_entry_query(), values)
        return Reservation(**values, image_id=None, actual_usd=None, source=None, settled_at=None)

    async def settle(
        self,
        reservation_id: str,
        *,
        user_id: str,
        actual_usd: Decimal | None,
        source: str,
        image_id: str | None = None,
        now: datetime | None = None,
    ) -> Reservation:
        """Record what the action actually cost; it then counts instead of the estimate.

        An actual cost above the estimate is recorded as it is (it was spent); the next
        reservation sees it. `None` with source "unknown" records a model with no known
        price: the report counts such actions rather than showing them as free.
        """
        reservation_id = require_uuid(reservation_id, "reservation id")
        user_id = require_uuid(user_id, "user id")
        if source not in SOURCES:
            raise InvalidInput(f"Invalid cost source {source!r}: expected one of {SOURCES}.")
        if (actual_usd is None) != (source == "unknown"):
            raise InvalidInput("An unknown cost is recorded as None with source 'unknown'.")
        actual = None if actual_usd is None else _money(actual_usd, "actual_usd")
        values: dict[str, Any] = {
            "status": "settled",
            "actual_usd": actual,
            "source": source,
            "settled_at": _utc(now),
        }
        if image_id is not None:
            values["image_id"] = require_uuid(image_id, "image id")
        # Released as interrupted while its process was only stalled (no heartbeat for
        # too long): the action did finish, and what it cost was spent.
        values["interrupted_at"] = None
        return await self._close(
            reservation_id, user_id, values, again_ok=False, reopen_interrupted=True
        )

    async def release(
        self, reservation_id: str, *, user_id: str, now: datetime | None = None
    ) -> Reservation:
        """Give a reservation back: the action failed, was cancelled or was declined.

        Releasing twice is harmless (a cancelled task and its clean-up may both do it);
        releasing a settled entry is refused, since that money was spent.
        """
        reservation_id = require_uuid(reservation_id, "reservation id")
        user_id = require_uuid(user_id, "user id")
        values = {"status": "released", "settled_at": _utc(now)}
        return await self._close(reservation_id, user_id, values, again_ok=True)

    async def _close(
        self,
        reservation_id: str,
        user_id: str,
        values: dict[str, Any],
        *,
        again_ok: bool,
        reopen_interrupted: bool = False,
    ) -> Reservation:
        """Move an open reservation to settled or released; only an open one moves
        (and, to be settled, one released as interrupted)."""
        movable = LedgerEntry.status == "reserved"
        if reopen_interrupted:
            interrupted = and_(
                LedgerEntry.status == "released", LedgerEntry.interrupted_at.is_not(None)
            )
            movable = or_(movable, interrupted)
        mine = (LedgerEntry.id == reservation_id, LedgerEntry.user_id == user_id)
        async with write_transaction(self._engine) as conn:
            moved = (
                await conn.execute(
                    update(LedgerEntry)
                    .where(*mine, movable)
                    .values(**values)
                    .returning(*LedgerEntry.__table__.c)
                )
            ).one_or_none()
            if moved is not None:  # the common case: one statement
                return Reservation.from_row(moved)
            row = (await conn.execute(select(LedgerEntry).where(*mine))).one_or_none()
        if row is None:
            raise NotFound("No such charge in your ledger.")
        if not (again_ok and row.status == values["status"]):
            raise InvalidInput(f"That charge was already {row.status}.")
        return Reservation.from_row(row)

    async def release_stale(self, older_than: timedelta, *, now: datetime | None = None) -> int:
        """Release every reservation with no owning process left open longer than
        `older_than`; returns how many.

        The last resort for entries no process owns (made before app instances existed,
        or by a ledger without one), which would otherwise hold budget forever. Run at
        start-up, with an age well beyond any action's length. Owned entries are never
        touched here: `release_abandoned` releases them once their process is dead.
        """
        when = _utc(now)
        return await self._release_interrupted(
            when, LedgerEntry.instance_id.is_(None), LedgerEntry.created_at < when - older_than
        )

    async def release_abandoned(self, alive: Select[Any], *, now: datetime | None = None) -> int:
        """Release every open reservation whose process is not among `alive` (a select of
        app_instances ids), marking it interrupted; returns how many.

        `alive` is evaluated inside the update, so a process that registered after the
        caller looked keeps what it has reserved since.
        """
        return await self._release_interrupted(
            _utc(now),
            LedgerEntry.instance_id.is_not(None),
            LedgerEntry.instance_id.not_in(alive.scalar_subquery()),
        )

    async def _release_interrupted(self, when: datetime, *which: Any) -> int:
        """Release the open reservations matching `which`, marked interrupted at `when`."""
        async with write_transaction(self._engine) as conn:
            result = await conn.execute(
                update(LedgerEntry)
                .where(LedgerEntry.status == "reserved", *which)
                .values(status="released", settled_at=when, interrupted_at=when)
            )
        return int(result.rowcount or 0)

    async def untold_threads(self) -> set[str]:
        """Conversations with interrupted work whose user has not been told yet."""
        async with self._reads.connect() as conn:
            rows = await conn.scalars(
                select(LedgerEntry.thread_id)
                .where(LedgerEntry.interrupted_at.is_not(None), LedgerEntry.told_at.is_(None))
                .distinct()
            )
            return set(rows.all())

    async def claim_interrupted(
        self, *, user_id: str, thread_id: str, now: datetime | None = None
    ) -> list[Reservation]:
        """The conversation's interrupted entries not told yet, now marked told, oldest
        first. Each is claimed by one caller only, so a notice is given once even when
        two processes serve the same user."""
        user_id = require_uuid(user_id, "user id")
        thread_id = require_uuid(thread_id, "thread id")
        when = _utc(now)
        claimed: list[Reservation] = []
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(LedgerEntry)
                    .where(
                        LedgerEntry.thread_id == thread_id,
                        LedgerEntry.user_id == user_id,
                        LedgerEntry.interrupted_at.is_not(None),
                        LedgerEntry.told_at.is_(None),
                    )
                    .order_by(LedgerEntry.created_at)
                )
            ).all()
        if not rows:
            return claimed
        # Writes only, so SQLite takes its write lock (waiting its turn) at the first one.
        async with write_transaction(self._engine) as conn:
            for row in rows:
                result = await conn.execute(
                    update(LedgerEntry)
                    .where(LedgerEntry.id == row.id, LedgerEntry.told_at.is_(None))
                    .values(told_at=when)
                )
                if result.rowcount == 1:
                    claimed.append(Reservation.from_row(row))
        return claimed

    async def entry(self, reservation_id: str, *, user_id: str) -> Reservation:
        reservation_id = require_uuid(reservation_id, "reservation id")
        user_id = require_uuid(user_id, "user id")
        async with self._reads.connect() as conn:
            row = (
                await conn.execute(
                    select(LedgerEntry).where(
                        LedgerEntry.id == reservation_id, LedgerEntry.user_id == user_id
                    )
                )
            ).one_or_none()
        if row is None:
            raise NotFound("No such charge in your ledger.")
        return Reservation.from_row(row)

    async def usage(
        self,
        *,
        user_id: str,
        thread_id: str,
        operator_limits: OperatorLimits | None = None,
        now: datetime | None = None,
    ) -> list[ScopeUsage]:
        """The conversation's and today's spending against their limits (for /cost)."""
        user_id = require_uuid(user_id, "user id")
        thread_id = require_uuid(thread_id, "thread id")
        async with self._reads.connect() as conn:
            return await _usage(conn, user_id, thread_id, _utc(now), operator_limits)

    async def confirmation_threshold(
        self,
        *,
        user_id: str,
        thread_id: str,
        operator_limits: OperatorLimits | None = None,
    ) -> Decimal | None:
        """The smallest "ask before spending more than" that applies here, if any.

        Asked before every paid action, so it reads only the budgets, not the sums.
        """
        user_id = require_uuid(user_id, "user id")
        thread_id = require_uuid(thread_id, "thread id")
        # The owner and the lowest threshold set in one statement (asked before every
        # paid action, just before the reservation reads the budgets again).
        params = {"user_id": user_id, "thread_id": thread_id}
        async with self._reads.connect() as conn:
            found_owner, chosen = (await conn.execute(_confirm_query(), params)).one()
        _refuse_foreign_thread(found_owner, user_id)
        if chosen is not None:  # a threshold set on either scope replaces the operator's
            return _dec(chosen)  # (see _usage)
        operator = operator_limits or OperatorLimits()
        if operator.confirm_above_usd is None:
            return None
        return _money(operator.confirm_above_usd, "operator confirm threshold")

    async def set_budget(
        self,
        scope: str,
        scope_id: str,
        limit_usd: Decimal | None,
        *,
        user_id: str | None,
        confirm_above_usd: Decimal | None = None,
        set_by: str = "user",
        now: datetime | None = None,
    ) -> BudgetRecord | None:
        """Set (or, with neither a limit nor a threshold, remove) one party's budget.

        A user may set budgets only on their own conversations and their own day; the
        operator's path is trusted code (a script, a migration) and passes user_id=None;
        the environment's limits apply through OperatorLimits without any row.
        """
        if scope not in SCOPES:
            raise InvalidInput(f"Invalid budget scope {scope!r}: expected one of {SCOPES}.")
        if set_by not in SETTERS:
            raise InvalidInput(f"Invalid budget setter {set_by!r}: expected one of {SETTERS}.")
        scope_id = require_uuid(scope_id, "thread id" if scope == "thread" else "user id")
        limit = None if limit_usd is None else _money(limit_usd, "limit_usd")
        confirm = None if confirm_above_usd is None else _money(confirm_above_usd, "confirm")
        key = (Budget.scope == scope, Budget.scope_id == scope_id, Budget.set_by == set_by)
        async with write_transaction(self._engine) as conn:
            if set_by == "user":
                if user_id is None:
                    raise InvalidInput("A budget set by a user needs the user's id.")
                user_id = require_uuid(user_id, "user id")
                if scope == "user_day" and scope_id != user_id:
                    raise NotFound("No such user.")
                if scope == "thread":
                    await _check_thread_owner(conn, scope_id, user_id)
            if limit is None and confirm is None:
                await conn.execute(delete(Budget).where(*key))
                return None
            changes = {"limit_usd": limit, "confirm_above_usd": confirm, "updated_at": _utc(now)}
            await conn.execute(
                self._insert(Budget)
                .values(scope=scope, scope_id=scope_id, set_by=set_by, **changes)
                .on_conflict_do_update(index_elements=["scope", "scope_id", "set_by"], set_=changes)
            )
            row = (await conn.execute(select(Budget).where(*key))).one()
        return _budget_record(row)

    async def budgets(self, *, user_id: str, thread_id: str | None = None) -> list[BudgetRecord]:
        """The budget rows on the user's day and, if given, on one of their conversations."""
        user_id = require_uuid(user_id, "user id")
        wanted = [(Budget.scope == "user_day") & (Budget.scope_id == user_id)]
        async with self._reads.connect() as conn:
            if thread_id is not None:
                thread_id = require_uuid(thread_id, "thread id")
                await _check_thread_owner(conn, thread_id, user_id)
                wanted.append((Budget.scope == "thread") & (Budget.scope_id == thread_id))
            rows = (
                await conn.execute(
                    select(Budget).where(or_(*wanted)).order_by(Budget.scope, Budget.set_by)
                )
            ).all()
        return [_budget_record(row) for row in rows]

    async def report(
        self,
        user_id: str,
        thread_id: str | None = None,
        days: int = 30,
        *,
        now: datetime | None = None,
    ) -> list[CostRow]:
        """Settled spending per UTC day, backend and model, over the last `days` days.

        Open reservations are left out: they are not spent yet (usage() shows them).
        """
        user_id = require_uuid(user_id, "user id")
        if not isinstance(days, int) or not 1 <= days <= 366:
            raise InvalidInput("A cost report covers 1 to 366 days.")
        start = _day_start(_utc(now)) - timedelta(days=days - 1)
        async with self._engine.connect() as conn:
            day = _utc_day(conn, LedgerEntry.created_at)
            query = (
                select(
                    day.label("day"),
                    LedgerEntry.backend,
                    LedgerEntry.model,
                    func.sum(LedgerEntry.actual_usd).label("usd"),
                    func.count().label("count"),
                    func.sum(case((LedgerEntry.actual_usd.is_(None), 1), else_=0)).label(
                        "unpriced"
                    ),
                    func.sum(case((LedgerEntry.source == "ceiling", 1), else_=0)).label(
                        "at_ceiling"
                    ),
                )
                .where(
                    LedgerEntry.user_id == user_id,
                    LedgerEntry.status == "settled",
                    LedgerEntry.created_at >= start,
                )
                .group_by(day, LedgerEntry.backend, LedgerEntry.model)
                .order_by(day, LedgerEntry.backend, LedgerEntry.model)
            )
            if thread_id is not None:
                query = query.where(LedgerEntry.thread_id == require_uuid(thread_id, "thread id"))
            rows = (await conn.execute(query)).all()
        return [
            CostRow(
                day=r.day if isinstance(r.day, date) else date.fromisoformat(r.day),
                backend=r.backend,
                model=r.model,
                usd=_dec(r.usd),
                count=r.count,
                unpriced=int(r.unpriced or 0),
                at_ceiling=int(r.at_ceiling or 0),
            )
            for r in rows
        ]

    async def batch_costs(
        self, user_id: str, days: int = 30, *, now: datetime | None = None
    ) -> list[BatchCostRow]:
        """Settled spending per batch over the last `days` UTC days, the latest batch first.

        From the ledger, which outlives the batches: a batch whose conversation was
        deleted still shows what it cost, without its title.
        """
        user_id = require_uuid(user_id, "user id")
        if not isinstance(days, int) or not 1 <= days <= 366:
            raise InvalidInput("A cost report covers 1 to 366 days.")
        start = _day_start(_utc(now)) - timedelta(days=days - 1)
        spent = (
            select(
                LedgerEntry.batch_id,
                func.sum(LedgerEntry.actual_usd).label("usd"),
                func.count().label("count"),
                func.max(LedgerEntry.created_at).label("latest"),
            )
            .where(
                LedgerEntry.user_id == user_id,
                LedgerEntry.batch_id.is_not(None),
                LedgerEntry.status == "settled",
                LedgerEntry.created_at >= start,
            )
            .group_by(LedgerEntry.batch_id)
            .subquery()
        )
        query = (
            select(spent, Batch.title, Batch.schedule_id, Schedule.name.label("schedule_name"))
            .outerjoin(Batch, and_(Batch.id == spent.c.batch_id, Batch.user_id == user_id))
            .outerjoin(
                Schedule, and_(Schedule.id == Batch.schedule_id, Schedule.user_id == user_id)
            )
            .order_by(spent.c.latest.desc(), spent.c.batch_id)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            BatchCostRow(
                batch_id=r.batch_id,
                title=r.title,
                schedule_id=r.schedule_id,
                schedule_name=r.schedule_name,
                usd=_dec(r.usd),
                count=int(r.count),
            )
            for r in rows
        ]

    async def csv(
        self,
        user_id: str,
        thread_id: str | None = None,
        days: int = 30,
        *,
        now: datetime | None = None,
    ) -> str:
        """The report as CSV, dollars to six places; `unpriced` counts actions whose model
        has no known price (their cost is not in `usd`)."""
        out = io.StringIO()
        writer = csv_cells.safe_writer(out, lineterminator="\n")  # no formulas
        writer.writerow(["day", "backend", "model", "usd", "count", "unpriced"])
        for row in await self.report(user_id, thread_id, days, now=now):
            writer.writerow(
                [
                    row.day.isoformat(),
                    row.backend,
                    row.model,
                    format(row.usd, "f"),
                    row.count,
                    row.unpriced,
                ]
            )
        return out.getvalue()


async def _check_thread_owner(conn: AsyncConnection, thread_id: str, user_id: str) -> None:
    _refuse_foreign_thread(await conn.scalar(owner_query(), {"thread_id": thread_id}), user_id)


def _refuse_foreign_thread(owner: str | None, user_id: str) -> None:
    """Someone else's conversation is not found; one not stored yet may be budgeted."""
    if owner not in (None, user_id):
        raise NotFound("No such conversation.")


async def _usage(
    conn: AsyncConnection,
    user_id: str,
    thread_id: str,
    when: datetime,
    operator_limits: OperatorLimits | None,
) -> list[ScopeUsage]:
    """Sums and effective limits of the conversation and of the user's UTC day.

    Someone else's conversation is not found (one not stored yet may be budgeted). The
    owner and the four sums are one statement, the budgets a second: a reservation runs
    under the write lock, so each statement less is time another request does not wait.
    """
    start = _day_start(when)
    params = {
        "user_id": user_id,
        "thread_id": thread_id,
        "day_start": start,
        "day_end": start + timedelta(days=1),
    }
    row = (await conn.execute(_usage_query(), params)).one()
    _refuse_foreign_thread(row[0], user_id)
    thread_sums, day_sums = (row[1], row[2]), (row[3], row[4])
    budget_rows = await _budget_rows(conn, user_id, thread_id)
    operator = operator_limits or OperatorLimits()
    # The operator's threshold is a default: a threshold set on either scope replaces it
    # (asking is a convenience, not a limit, so raising it is the user's to decide).
    chosen_confirm = any(r.confirm_above_usd is not None for r in budget_rows)
    usages = []
    for scope, (spent, reserved) in (("thread", thread_sums), ("user_day", day_sums)):
        rows = [r for r in budget_rows if r.scope == scope]
        limits = [(_dec(r.limit_usd), r.set_by) for r in rows if r.limit_usd is not None]
        default = operator.limit_for(scope)
        if default is not None:
            limits.append((_money(default, "operator limit"), "operator"))
        confirms = [_dec(r.confirm_above_usd) for r in rows if r.confirm_above_usd is not None]
        if not chosen_confirm and operator.confirm_above_usd is not None:
            confirms.append(_money(operator.confirm_above_usd, "operator confirm threshold"))
        limit, set_by = min(limits, key=lambda pair: pair[0]) if limits else (None, None)
        usages.append(
            ScopeUsage(
                scope=scope,
                spent_usd=_dec(spent),
                reserved_usd=_dec(reserved),
                limit_usd=limit,
                limit_set_by=set_by,
                confirm_above_usd=min(confirms) if confirms else None,
            )
        )
    return usages


async def _budget_rows(conn: AsyncConnection, user_id: str, thread_id: str) -> list[Any]:
    """The budgets set on the conversation and on the user's day."""
    params = {"user_id": user_id, "thread_id": thread_id}
    return list((await conn.execute(_budget_rows_query(), params)).all())


# The statements of every reservation, built once (functools.cache) with bound
# parameters: building them per call, then their cache keys, cost more than running them.


def _budget_scopes() -> Any:
    """The budgets that apply here: the conversation's and the user's day."""
    return or_(
        (Budget.scope == "thread") & (Budget.scope_id == bindparam("thread_id")),
        (Budget.scope == "user_day") & (Budget.scope_id == bindparam("user_id")),
    )


@functools.cache
def _budget_rows_query() -> Any:
    return select(Budget).where(_budget_scopes())


@functools.cache
def _confirm_query() -> Any:
    """The conversation's owner and the lowest confirm threshold set on either scope."""
    lowest = select(func.min(Budget.confirm_above_usd)).where(_budget_scopes())
    return select(owner_query().scalar_subquery(), lowest.scalar_subquery())


@functools.cache
def _usage_query() -> Any:
    """The conversation's owner, then settled and reserved sums in the conversation and
    in the user's day (from day_start, before day_end)."""

    def total(status: str, amount: Any, *where: Any) -> Any:
        picked = case((LedgerEntry.status == status, amount))
        return select(func.sum(picked)).where(*where).scalar_subquery()

    in_thread = (LedgerEntry.thread_id == bindparam("thread_id"),)
    in_day = (
        LedgerEntry.user_id == bindparam("user_id"),
        LedgerEntry.created_at >= bindparam("day_start"),
        LedgerEntry.created_at < bindparam("day_end"),
    )
    return select(
        owner_query().scalar_subquery(),
        total("settled", LedgerEntry.actual_usd, *in_thread),
        total("reserved", LedgerEntry.estimate_usd, *in_thread),
        total("settled", LedgerEntry.actual_usd, *in_day),
        total("reserved", LedgerEntry.estimate_usd, *in_day),
    )


@functools.cache
def _insert_entry_query() -> Any:
    return insert(LedgerEntry)


@functools.cache
def _advisory_locks_query(count: int) -> Any:
    """PostgreSQL: take `count` transaction locks, named key0, key1, ... in that order."""
    return select(
        *(func.pg_advisory_xact_lock(func.hashtext(bindparam(f"key{i}"))) for i in range(count))
    )


def _utc_day(conn: AsyncConnection, column: Any) -> Any:
    """The UTC calendar day of a timestamp column, in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        # A literal, not a bound parameter: GROUP BY must repeat the same expression.
        return func.date(func.timezone(literal_column("'UTC'"), column))
    return func.date(column)  # SQLite stores UTC timestamps as ISO text


def _budget_record(row: Row[Any]) -> BudgetRecord:
    return BudgetRecord(
        scope=row.scope,
        scope_id=row.scope_id,
        limit_usd=None if row.limit_usd is None else _dec(row.limit_usd),
        confirm_above_usd=None if row.confirm_above_usd is None else _dec(row.confirm_above_usd),
        set_by=row.set_by,
        updated_at=row.updated_at,
    )


def _money(value: Decimal, name: str) -> Decimal:
    """A dollar amount the ledger can store exactly; anything else is refused, not rounded."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{name} must be a Decimal, not {type(value).__name__}.")
    if not value.is_finite() or value < 0 or value >= _MAX_USD:
        raise InvalidInput(
            f"Invalid {name} {value}: expected {money.usd(0, places=0)} up to "
            f"{money.usd(_MAX_USD - _MICRO)}."
        )
    if value != value.quantize(_MICRO):
        raise InvalidInput(f"Invalid {name} {value}: at most six decimal places.")
    return value.quantize(_MICRO)


def _dec(value: Any) -> Decimal:
    """A stored amount or sum as a Decimal to six places (SQLite hands back REAL sums)."""
    if value is None:
        return _ZERO
    if not isinstance(value, Decimal):
        value = Decimal(str(value))
    return value.quantize(_MICRO)


def _label(value: str, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidInput(f"Invalid {name}: expected 1 to {max_length} characters.")
    return value


def _utc(now: datetime | None) -> datetime:
    """Aware UTC time: the UTC day decides which daily budget a charge counts against."""
    if now is None:
        return utcnow()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware.")
    return now.astimezone(UTC)


def _day_start(when: datetime) -> datetime:
    return datetime(when.year, when.month, when.day, tzinfo=UTC)
