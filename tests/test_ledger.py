"""The cost ledger: reservations, settlement, budgets that hold under concurrency.

Every test runs on SQLite and on PostgreSQL, and asserts on what the ledger reads back
(usage, report, CSV) and on the messages a user would see.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import InvalidInput, NotFound
from memory.db import session_factory
from memory.ledger import BudgetExceeded, Ledger, OperatorLimits, ScopeUsage
from memory.models import Thread, new_id
from memory.users import UserStore
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures

D = Decimal
NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass
class World:
    ledger: Ledger
    user: str
    thread: str
    other_user: str
    other_thread: str
    engine: AsyncEngine

    async def new_thread(self, user_id: str | None = None) -> str:
        return await _thread(self.engine, user_id or self.user)

    async def reserve(self, estimate: str, *, thread: str | None = None, **kwargs) -> str:
        reservation = await self.ledger.reserve(
            user_id=self.user,
            thread_id=thread or self.thread,
            backend=kwargs.pop("backend", "openai"),
            model=kwargs.pop("model", "gpt-image-1.5"),
            what="image",
            estimate_usd=D(estimate),
            **{"now": NOON, **kwargs},
        )
        return reservation.id

    async def usage(self, thread: str | None = None, **kwargs) -> dict[str, ScopeUsage]:
        usages = await self.ledger.usage(
            user_id=self.user, thread_id=thread or self.thread, **{"now": NOON, **kwargs}
        )
        return {u.scope: u for u in usages}


async def _thread(engine: AsyncEngine, user_id: str) -> str:  # noqa: F811
    thread_id = new_id()
    async with session_factory(engine)() as session, session.begin():
        session.add(Thread(id=thread_id, user_id=user_id))
    return thread_id


@pytest.fixture
async def world(engine) -> World:  # noqa: F811
    users = UserStore(session_factory(engine))
    alice = await users.add("alice", "password-123")
    mallory = await users.add("mallory", "password-456")
    return World(
        ledger=Ledger(engine),
        user=alice.id,
        thread=await _thread(engine, alice.id),
        other_user=mallory.id,
        other_thread=await _thread(engine, mallory.id),
        engine=engine,
    )


async def test_reserve_settle_release_arithmetic(world):
    ledger = world.ledger
    await ledger.set_budget("thread", world.thread, D("1.00"), user_id=world.user)
    first = await world.reserve("0.30")
    usage = (await world.usage())["thread"]
    assert (usage.spent_usd, usage.reserved_usd, usage.limit_usd) == (D("0"), D("0.3"), D("1"))

    settled = await ledger.settle(
        first, user_id=world.user, actual_usd=D("0.25"), source="reported", now=NOON
    )
    assert (settled.status, settled.actual_usd) == ("settled", D("0.25"))
    assert settled.source == "reported"
    usage = await world.usage()
    assert usage["thread"].spent_usd == D("0.25") and usage["thread"].reserved_usd == 0
    assert usage["user_day"].spent_usd == D("0.25")

    second = await world.reserve("0.40")
    assert (await world.usage())["thread"].reserved_usd == D("0.40")
    released = await ledger.release(second, user_id=world.user, now=NOON)
    assert released.status == "released" and released.actual_usd is None
    # Released spends nothing; releasing again is harmless, settling it is not.
    usage = (await world.usage())["thread"]
    assert (usage.spent_usd, usage.reserved_usd) == (D("0.25"), D("0"))
    assert (await ledger.release(second, user_id=world.user)).status == "released"
    with pytest.raises(InvalidInput, match="already released"):
        await ledger.settle(second, user_id=world.user, actual_usd=D("0.4"), source="table")
    with pytest.raises(InvalidInput, match="already settled"):
        await ledger.release(first, user_id=world.user)
    with pytest.raises(InvalidInput, match="already settled"):
        await ledger.settle(first, user_id=world.user, actual_usd=D("0.1"), source="table")
    # What is left of the budget can be reserved to the cent.
    await world.reserve("0.75")


async def test_hard_limit_refuses_with_the_numbers(world):
    ledger = world.ledger
    await ledger.set_budget("thread", world.thread, D("1.00"), user_id=world.user)
    spent = await world.reserve("0.50")
    await ledger.settle(spent, user_id=world.user, actual_usd=D("0.60"), source="table")
    await world.reserve("0.30")
    with pytest.raises(BudgetExceeded) as refused:
        await world.reserve("0.20")
    assert str(refused.value) == (
        "This would go over the budget for this conversation: spent $0.60, reserved $0.30 "
        "for requests still running, this request $0.20, limit $1.00 (set by you)."
    )
    assert refused.value.usage.scope == "thread"
    # Nothing was reserved by the refusal, and exactly the rest still fits.
    assert (await world.usage())["thread"].reserved_usd == D("0.30")
    await world.reserve("0.10")
    with pytest.raises(BudgetExceeded, match=r"this request \$0.000001, limit \$1.00"):
        await world.reserve("0.000001")


async def test_user_day_counts_only_the_utc_day(world):
    ledger = world.ledger
    await ledger.set_budget("user_day", world.user, D("1.00"), user_id=world.user)
    late_yesterday = datetime(2026, 11, 21, 23, 59, 59, tzinfo=UTC)
    await world.reserve("0.80", now=late_yesterday)
    # Another time zone, same instant: still yesterday in UTC.
    east = late_yesterday.astimezone(ZoneInfo("Asia/Tokyo"))
    with pytest.raises(BudgetExceeded, match="today"):
        await world.reserve("0.30", now=east, thread=await world.new_thread())
    early_today = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    await world.reserve("0.90", now=early_today, thread=await world.new_thread())
    with pytest.raises(BudgetExceeded) as refused:
        await world.reserve("0.20", thread=await world.new_thread())
    assert str(refused.value) == (
        "This would go over the budget for today (UTC): spent $0.00, reserved $0.90 for "
        "requests still running, this request $0.20, limit $1.00 (set by you)."
    )
    # The thread's own total includes yesterday's spending; the day's does not.
    usage = await world.usage()
    assert usage["thread"].reserved_usd == D("0.80") and usage["thread"].limit_usd is None
    assert usage["user_day"].reserved_usd == D("0.90")
    # Another user's day is their own.
    other = await ledger.reserve(
        user_id=world.other_user,
        thread_id=world.other_thread,
        backend="openai",
        model="m",
        what="image",
        estimate_usd=D("5"),
        now=NOON,
    )
    assert other.estimate_usd == D("5")


async def test_the_smaller_of_user_and_operator_limits_holds(world):
    ledger = world.ledger
    await ledger.set_budget("thread", world.thread, D("5.00"), user_id=world.user)
    limits = OperatorLimits(thread_usd=D("1.00"), user_day_usd=D("20"))
    await world.reserve("0.90", operator_limits=limits)
    with pytest.raises(BudgetExceeded, match=r"limit \$1.00 \(set by the operator\)"):
        await world.reserve("0.20", operator_limits=limits)
    # An operator row on this user's day, smaller than the settings' default, holds too.
    await ledger.set_budget("user_day", world.user, D("0.95"), user_id=None, set_by="operator")
    with pytest.raises(BudgetExceeded, match=r"today \(UTC\).*limit \$0.95 \(set by the operator"):
        await world.reserve("0.10", thread=await world.new_thread())
    # A user may tighten below the operator, never loosen above.
    await ledger.set_budget("user_day", world.user, D("0.50"), user_id=world.user)
    with pytest.raises(BudgetExceeded, match=r"limit \$0.50 \(set by you\)"):
        await world.reserve("0.01", thread=await world.new_thread())
    await ledger.set_budget("user_day", world.user, D("100"), user_id=world.user)
    with pytest.raises(BudgetExceeded, match=r"limit \$0.95 \(set by the operator"):
        await world.reserve("0.10", thread=await world.new_thread())
    rows = await ledger.budgets(user_id=world.user, thread_id=world.thread)
    assert [(b.scope, b.set_by, b.limit_usd) for b in rows] == [
        ("thread", "user", D("5")),
        ("user_day", "operator", D("0.95")),
        ("user_day", "user", D("100")),
    ]
    # Neither a limit nor a threshold removes the user's row; the operator's stays.
    assert await ledger.set_budget("user_day", world.user, None, user_id=world.user) is None
    rows = await ledger.budgets(user_id=world.user)
    assert [(b.scope, b.set_by) for b in rows] == [("user_day", "operator")]


async def test_confirmation_threshold(world):
    ledger = world.ledger
    await ledger.set_budget(
        "thread", world.thread, None, confirm_above_usd=D("0.50"), user_id=world.user
    )
    threshold = ledger.confirmation_threshold
    kwargs = {"user_id": world.user, "thread_id": world.thread}
    assert await threshold(**kwargs) == D("0.50")
    # The operator's threshold is only a default: the user's own choice replaces it.
    operator = OperatorLimits(confirm_above_usd=D("0.20"))
    assert await threshold(operator_limits=operator, **kwargs) == D("0.50")
    other_thread = await world.new_thread()
    assert await threshold(
        operator_limits=operator, user_id=world.user, thread_id=other_thread
    ) == D("0.20")
    assert await threshold(user_id=world.user, thread_id=other_thread) is None
    # A threshold alone is no limit.
    await world.reserve("3.00")


@pytest.mark.parametrize("scope", ["thread", "user_day"])
async def test_twenty_concurrent_reservations_fit_exactly_ten(world, scope):
    """Each reservation in its own connection, all at once, against room for ten."""
    scope_id = world.thread if scope == "thread" else world.user
    await world.ledger.set_budget(scope, scope_id, D("1.00"), user_id=world.user)
    # For the daily budget, every request is in a different conversation.
    threads = [world.thread if scope == "thread" else await world.new_thread() for _ in range(20)]

    async def one(thread: str) -> str:
        return await world.reserve("0.10", thread=thread)

    results = await asyncio.gather(*(one(t) for t in threads), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(admitted), len(refused)) == (10, 10), results
    usage = (await world.usage())[scope]
    assert usage.reserved_usd == D("1.00") <= usage.limit_usd
    assert all(r.usage.spent_usd + r.usage.reserved_usd == D("1.00") for r in refused)


async def test_concurrent_reservations_that_settle_in_between(world):
    ledger = world.ledger
    await ledger.set_budget("thread", world.thread, D("1.00"), user_id=world.user)

    async def paid_action(k: int) -> str:
        reservation = await world.reserve("0.10")
        await asyncio.sleep(0.001 * (k % 3))  # the provider call
        await ledger.settle(
            reservation, user_id=world.user, actual_usd=D("0.10"), source="reported"
        )
        return reservation

    results = await asyncio.gather(*(paid_action(k) for k in range(20)), return_exceptions=True)
    admitted = [r for r in results if isinstance(r, str)]
    assert len(admitted) == 10, results
    assert all(isinstance(r, BudgetExceeded) for r in results if r not in admitted)
    usage = (await world.usage())["thread"]
    assert (usage.spent_usd, usage.reserved_usd) == (D("1.00"), D("0"))
    rows = await ledger.report(world.user, now=NOON)
    assert [(r.usd, r.count) for r in rows] == [(D("1.00"), 10)]


async def test_report_and_csv(world):
    ledger = world.ledger
    day1 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    second_thread = await world.new_thread()

    async def charge(estimate, actual, when, model="gpt-image-1.5", thread=None) -> str:
        rid = await world.reserve(estimate, now=when, model=model, thread=thread)
        if actual is not None:
            await ledger.settle(rid, user_id=world.user, actual_usd=D(actual), source="table")
        return rid

    await charge("0.04", "0.04", day1)
    await charge("0.04", "0.05", day1 + timedelta(hours=14, minutes=59))  # 23:59 UTC
    await charge("0.30", "0.25", day1, model="flux-dev")
    await charge("0.04", "0.04", NOON, thread=second_thread)
    await ledger.release(await charge("0.04", None, NOON), user_id=world.user)
    await charge("0.04", None, NOON)  # still running: not spent yet
    await charge("9.00", "9.00", NOON - timedelta(days=40))  # outside the window
    # Another user's spending never shows.
    other = await ledger.reserve(
        user_id=world.other_user,
        thread_id=world.other_thread,
        backend="openai",
        model="gpt-image-1.5",
        what="image",
        estimate_usd=D("1"),
        now=NOON,
    )
    await ledger.settle(other.id, user_id=world.other_user, actual_usd=D("1"), source="table")

    rows = await ledger.report(world.user, now=NOON)
    assert [(r.day.isoformat(), r.model, r.usd, r.count) for r in rows] == [
        ("2026-11-20", "flux-dev", D("0.25"), 1),
        ("2026-11-20", "gpt-image-1.5", D("0.09"), 2),
        ("2026-11-22", "gpt-image-1.5", D("0.04"), 1),
    ]
    only_first = await ledger.report(world.user, world.thread, days=1, now=NOON)
    assert only_first == []
    assert await ledger.csv(world.user, second_thread, now=NOON) == (
        "day,backend,model,usd,count,unpriced\n2026-11-22,openai,gpt-image-1.5,0.040000,1,0\n"
    )
    assert (await ledger.csv(world.user, days=60, now=NOON)).splitlines()[1] == (
        "2026-10-13,openai,gpt-image-1.5,9.000000,1,0"
    )
    assert await ledger.report(world.user, world.other_thread, now=NOON) == []


async def test_an_unknown_price_is_counted_not_shown_as_free(world):
    ledger = world.ledger
    rid = await world.reserve("0", now=NOON, model="someone/new-model")
    settled = await ledger.settle(rid, user_id=world.user, actual_usd=None, source="unknown")
    assert (settled.actual_usd, settled.source) == (None, "unknown")
    priced = await world.reserve("0.04", now=NOON, model="someone/new-model")
    await ledger.settle(priced, user_id=world.user, actual_usd=D("0.04"), source="table")
    [row] = await ledger.report(world.user, world.thread, now=NOON)
    assert (row.usd, row.count, row.unpriced) == (D("0.04"), 2, 1)
    with pytest.raises(InvalidInput, match="unknown"):
        await ledger.settle(
            await world.reserve("0", now=NOON),
            user_id=world.user,
            actual_usd=None,
            source="table",
        )


async def test_stale_reservations_are_released(world):
    """A crashed process never settles; the start-up sweep gives the budget back."""
    ledger = world.ledger
    old = await world.reserve("0.50", now=NOON - timedelta(hours=3))
    fresh = await world.reserve("0.50", now=NOON)
    assert await ledger.release_stale(timedelta(hours=1), now=NOON) == 1
    assert (await ledger.entry(old, user_id=world.user)).status == "released"
    assert (await ledger.entry(fresh, user_id=world.user)).status == "reserved"
    assert await ledger.release_stale(timedelta(hours=1), now=NOON) == 0


async def test_everything_is_scoped_to_the_user(world):
    ledger = world.ledger
    with pytest.raises(NotFound):
        await world.reserve("0.10", thread=world.other_thread)
    with pytest.raises(NotFound):
        await ledger.set_budget("thread", world.other_thread, D("0"), user_id=world.user)
    with pytest.raises(NotFound):
        await ledger.set_budget("user_day", world.other_user, D("0"), user_id=world.user)
    with pytest.raises(NotFound):
        await ledger.budgets(user_id=world.user, thread_id=world.other_thread)
    mine = await world.reserve("0.10")
    for attempt in (
        ledger.settle(mine, user_id=world.other_user, actual_usd=D("0"), source="table"),
        ledger.release(mine, user_id=world.other_user),
        ledger.entry(mine, user_id=world.other_user),
    ):
        with pytest.raises(NotFound):
            await attempt
    assert (await ledger.entry(mine, user_id=world.user)).status == "reserved"


async def test_bad_arguments_are_refused_not_corrected(world):
    ledger = world.ledger
    with pytest.raises(InvalidInput, match="thread id"):
        await world.reserve("0.10", thread="1; DROP TABLE ledger_entries")
    with pytest.raises(InvalidInput, match="six decimal places"):
        await world.reserve("0.0000001")
    with pytest.raises(InvalidInput, match="estimate_usd"):
        await world.reserve("-1")
    with pytest.raises(TypeError, match="Decimal"):
        await ledger.reserve(
            user_id=world.user,
            thread_id=world.thread,
            backend="openai",
            model="m",
            what="image",
            estimate_usd=0.1,
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        await world.reserve("0.10", now=datetime(2026, 11, 22, 12))
    mine = await world.reserve("0.10")
    with pytest.raises(InvalidInput, match="cost source"):
        await ledger.settle(mine, user_id=world.user, actual_usd=D("0.1"), source="guess")
    with pytest.raises(InvalidInput, match="scope"):
        await ledger.set_budget("month", world.user, D("1"), user_id=world.user)
    with pytest.raises(InvalidInput, match="needs the user's id"):
        await ledger.set_budget("user_day", world.user, D("1"), user_id=None)
