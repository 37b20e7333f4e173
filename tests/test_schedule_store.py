"""The schedule store: a schedule and its own conversation, owner-only changes, and each
due time claimed by exactly one of two app processes sharing the database.

Every test runs on SQLite and on PostgreSQL. "Two processes" are two stores on two
engines of the same database, racing with asyncio.gather.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from core.errors import InvalidInput, NotFound
from memory.db import create_engine, session_factory
from memory.models import Image, Thread, new_id
from memory.schedules import NewSchedule, ScheduleRecord, ScheduleStore
from memory.users import UserStore
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures

EIGHT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def _new(**changes) -> NewSchedule:
    base = NewSchedule(
        name="Morning watercolours",
        kind="daily",
        expression="08:00",
        timezone="Europe/London",
        prompt="a watercolour of {theme}",
        count=3,
        next_run_at=EIGHT,
        themes=["the sea", "a forest", "a city"],
        style="watercolour",
        budget_usd=Decimal("2.50"),
    )
    return replace(base, **changes)


@pytest.fixture
async def people(engine):  # noqa: F811
    users = UserStore(session_factory(engine))
    return (await users.add("alice", "password-123")).id, (
        await users.add("mallory", "password-456")
    ).id


@pytest.fixture
async def second_engine(db_url):  # noqa: F811
    """Another engine (another process's pool) on the same, already migrated database."""
    other = create_engine(db_url)
    yield other
    await other.dispose()


async def test_a_schedule_gets_its_own_conversation_in_the_sidebar(engine, people):  # noqa: F811
    alice, _ = people
    store = ScheduleStore(engine)
    made = await store.create(alice, _new())
    assert made == await store.get(made.id, alice)
    assert (made.status, made.theme_index, made.count) == ("active", 0, 3)
    assert made.themes == ["the sea", "a forest", "a city"]
    assert made.budget_usd == Decimal("2.5") and made.next_run_at == EIGHT
    assert made.last_run_at is None and made.missed_policy is None
    async with session_factory(engine)() as session:
        thread = await session.get(Thread, made.thread_id)
    assert thread is not None
    assert (thread.user_id, thread.name) == (alice, "Schedule: Morning watercolours")
    assert [s.id for s in await store.for_user(alice)] == [made.id]


async def test_another_users_schedule_is_not_found_and_unchanged(engine, people):  # noqa: F811
    alice, mallory = people
    store = ScheduleStore(engine)
    made = await store.create(alice, _new())
    message = f"No schedule with id {made.id} in your account."
    for call in (
        store.get(made.id, mallory),
        store.update(made.id, mallory, count=9),
        store.set_status(made.id, mallory, "paused"),
        store.delete(made.id, mallory),
    ):
        with pytest.raises(NotFound, match=message):
            await call
    missing = new_id()
    with pytest.raises(NotFound, match=f"No schedule with id {missing} in your account."):
        await store.get(missing, alice)
    with pytest.raises(InvalidInput, match="Invalid schedule id"):
        await store.get("../etc", alice)
    assert await store.for_user(mallory) == []
    assert await store.get(made.id, alice) == made


async def test_update_pause_resume_and_delete(engine, people):  # noqa: F811
    alice, _ = people
    store = ScheduleStore(engine)
    made = await store.create(alice, _new())
    changed = await store.update(made.id, alice, count=4, name="Evening", missed_policy="skip")
    assert (changed.count, changed.name, changed.missed_policy) == (4, "Evening", "skip")
    async with session_factory(engine)() as session:
        assert (await session.get(Thread, made.thread_id)).name == "Schedule: Evening"
    with pytest.raises(InvalidInput, match="thread_id cannot be changed"):
        await store.update(made.id, alice, thread_id=new_id())
    with pytest.raises(InvalidInput, match="Invalid image count 0"):
        await store.update(made.id, alice, count=0)
    with pytest.raises(InvalidInput, match="Invalid missed-run policy 'later'"):
        await store.update(made.id, alice, missed_policy="later")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.update(made.id, alice, next_run_at=datetime(2026, 12, 2, 8, 0))

    assert (await store.set_status(made.id, alice, "paused")).status == "paused"
    with pytest.raises(InvalidInput, match=f"Schedule {made.id} is already paused."):
        await store.set_status(made.id, alice, "paused")
    assert await store.due(EIGHT + DAY) == []  # a paused schedule is never due
    assert (await store.set_status(made.id, alice, "active")).status == "active"

    await store.delete(made.id, alice)
    assert await store.for_user(alice) == []
    async with session_factory(engine)() as session:  # its conversation stays
        assert await session.get(Thread, made.thread_id) is not None


async def test_due_lists_active_schedules_whose_time_has_come(engine, people):  # noqa: F811
    alice, mallory = people
    store = ScheduleStore(engine)
    early = await store.create(alice, _new(next_run_at=EIGHT - DAY))
    now = await store.create(mallory, _new(next_run_at=EIGHT))
    await store.create(alice, _new(next_run_at=EIGHT + timedelta(seconds=1)))
    # A due time given in another zone is the same instant.
    london = EIGHT.astimezone(ZoneInfo("America/New_York"))
    assert [s.id for s in await store.due(london)] == [early.id, now.id]
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.due(datetime(2026, 12, 1, 8, 0))


async def _race(stores: list[ScheduleStore], schedule: ScheduleRecord, n: int) -> list:
    due = schedule.next_run_at
    return await asyncio.gather(
        *(
            stores[i % len(stores)].claim(
                schedule.id, due_at=due, next_run_at=due + DAY, now=due + timedelta(seconds=i)
            )
            for i in range(n)
        )
    )


async def test_two_processes_fire_each_due_time_exactly_once(engine, second_engine, people):  # noqa: F811
    alice, _ = people
    stores = [ScheduleStore(engine), ScheduleStore(second_engine)]
    schedule = await stores[0].create(alice, _new())
    themes_used = []
    for run in range(4):
        (due,) = await stores[run % 2].due(schedule.next_run_at)
        results = await _race(stores, due, 16)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, f"run {run}: {len(winners)} claims won"
        won = winners[0]
        assert won.next_run_at == due.next_run_at + DAY
        assert won.last_run_at is not None and won.last_run_at >= due.next_run_at
        themes_used.append(won.themes[won.theme_index % len(won.themes)])
        schedule = await stores[0].get(schedule.id, alice)
        assert schedule.theme_index == run + 1
        # The same due time claimed again later (a slow poller) wins nothing.
        assert (
            await stores[1].claim(
                schedule.id, due_at=due.next_run_at, next_run_at=due.next_run_at + DAY, now=EIGHT
            )
            is None
        )
    assert themes_used == ["the sea", "a forest", "a city", "the sea"]
    assert schedule.next_run_at == EIGHT + 4 * DAY


async def test_a_claim_can_keep_the_theme_and_a_paused_schedule_is_not_claimed(engine, people):  # noqa: F811
    alice, _ = people
    store = ScheduleStore(engine)
    made = await store.create(alice, _new(theme_index=5))
    claimed = await store.claim(
        made.id, due_at=EIGHT, next_run_at=EIGHT + DAY, now=EIGHT, advance_theme=False
    )
    assert claimed is not None and claimed.theme_index == 5
    assert (await store.get(made.id, alice)).theme_index == 5
    await store.set_status(made.id, alice, "paused")
    assert await store.claim(made.id, due_at=EIGHT + DAY, next_run_at=EIGHT, now=EIGHT) is None
    batch_id = new_id()
    await store.set_last_batch(made.id, batch_id)
    assert (await store.get(made.id, alice)).last_batch_id == batch_id


async def test_create_refuses_bad_fields_and_makes_nothing(engine, people):  # noqa: F811
    alice, _ = people
    store = ScheduleStore(engine)
    for bad, message in (
        (_new(name=" "), "Invalid schedule name: it may not be empty"),
        (_new(name="x" * 121), "at most 120 characters"),
        (_new(kind="hourly"), "Invalid schedule kind 'hourly'"),
        (_new(themes=["sea", ""]), "Themes must be a list of non-empty texts"),
        (_new(budget_usd=Decimal("0")), "Invalid schedule budget"),
        (_new(count=0), "Invalid image count 0"),
    ):
        with pytest.raises(InvalidInput, match=message):
            await store.create(alice, bad)
    assert await store.for_user(alice) == []
    async with session_factory(engine)() as session:
        assert (await session.scalars(select(Thread).where(Thread.user_id == alice))).all() == []
        assert (await session.scalars(select(Image))).all() == []
