"""Schedules: created once with their cost and next run times, managed by their owner
only, fired by the scheduler with the missed-run policy, and, with two app processes on
one database, fired exactly once per due time.

The in-process tests run the tools and the scheduler on SQLite and PostgreSQL with the
seeded test backend (deterministic pictures, $0.10 an image) and the real batch engine,
and read the rows back. The end-to-end test runs two real app processes on one data
directory against the fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from chat_app import cost_report
from core.errors import InvalidInput, NotFound
from memory.batches import BatchStore
from memory.db import create_engine, session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.media_store import MediaStore
from memory.models import Batch, Image, LedgerEntry, utcnow
from memory.schedules import NewSchedule, ScheduleStore
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from tests.app_process import ADMIN_PASSWORD, AppProcess
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.gallery_rows import account
from tests.test_tools import SeededBackend
from tests.tool_helpers import SEEDED_PRICE_FILE, ChatRecorder, tool_context, with_turn
from tools import spending
from tools.context import GenerationDefaults
from tools.schedule_creation import manage_schedules, schedule_creation
from tools.schedule_runs import run_prompt

# --------------------------------------------------------------------------- in process


@pytest.fixture
async def world(tmp_path: Path, engine: Any) -> Any:  # noqa: F811
    me, other = await account(engine, "sam"), await account(engine, "mallory")
    prices = tmp_path / "prices.toml"
    prices.write_text(SEEDED_PRICE_FILE)  # $0.10 an image
    chat = ChatRecorder()
    ctx = tool_context(
        user_id=me.id,
        thread_id=str(uuid.uuid4()),
        backends=BackendRegistry({"seeded": SeededBackend()}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="seeded"),
        prices=PriceTable.load(prices),
        ledger=Ledger(engine),
        schedules=ScheduleStore(engine),
        port=chat,
    )
    return ctx, chat, other


def test_themes_rotate_into_the_prompt():
    assert run_prompt("a watercolour of {theme}", ["foxes", "owls"], 3) == "a watercolour of owls"
    assert run_prompt("a lighthouse", ["dawn", "dusk"], 2) == "a lighthouse, theme: dawn"
    assert run_prompt("a lighthouse", [], 5) == "a lighthouse"


async def test_creating_shows_one_runs_cost_and_next_runs_and_asks_once(world):
    ctx, chat, _ = world
    text, _ = await schedule_creation(
        ctx,
        prompt="a watercolour of {theme}",
        when="every day at 8",
        timezone="Europe/London",
        themes=["foxes", "owls"],
        count=3,
        style="watercolour",
        backend="seeded",
        budget_usd=1.5,
        name="Morning foxes",
    )
    [question] = chat.asked
    assert "$0.3000" in question  # 3 images × $0.10, one run
    assert question.count("08:00 GMT") == 3, question  # the next three runs, local time
    assert "Themes in turn: foxes, owls" in question and "$1.50" in question
    [record] = await ctx.services.schedules.for_user(ctx.turn.user_id)
    assert (record.name, record.count, record.style, record.backend) == (
        "Morning foxes",
        3,
        "watercolour",
        "seeded:toy-v1",
    )
    assert record.next_run_at > utcnow() and f"`{record.id[:8]}`" in text
    # The schedule's budget is its conversation's budget in the ledger.
    [budget] = await ctx.services.ledger.budgets(
        user_id=ctx.turn.user_id, thread_id=record.thread_id
    )
    assert (budget.scope, budget.limit_usd) == ("thread", Decimal("1.5"))


async def test_declined_or_invalid_creates_nothing(world):
    ctx, chat, _ = world
    chat.answer = False
    with pytest.raises(spending.Declined):
        await schedule_creation(ctx, prompt="a fox", when="every 2 hours", backend="seeded")
    chat.answer = True
    with pytest.raises(InvalidInput, match="no themes"):
        await schedule_creation(ctx, prompt="a {theme}", when="daily 08:00", backend="seeded")
    with pytest.raises(InvalidInput, match="whole budget"):
        await schedule_creation(
            ctx, prompt="a fox", when="daily 08:00", count=5, budget_usd=0.2, backend="seeded"
        )
    with pytest.raises(InvalidInput):
        await schedule_creation(ctx, prompt="a fox", when="whenever you like", backend="seeded")
    assert await ctx.services.schedules.for_user(ctx.turn.user_id) == []


async def test_pause_resume_edit_delete_by_the_owner_only(world):
    ctx, chat, other = world
    await schedule_creation(ctx, prompt="a fox", when="daily 08:00", backend="seeded")
    [record] = await ctx.services.schedules.for_user(ctx.turn.user_id)
    short = record.id[:8]

    listed, _ = await manage_schedules(ctx, action="list")
    assert f"`{short}`" in listed and "active" in listed

    # Another user names it by its full id or its short one: not found, either way.
    theirs = with_turn(ctx, user_id=other.id)
    for action in ("pause", "resume", "delete", "edit"):
        for given in (record.id, short):
            with pytest.raises(NotFound, match="No schedule with id"):
                await manage_schedules(theirs, action=action, schedule_id=given, count=2)
    assert (await manage_schedules(theirs, action="list"))[0].startswith("You have no schedules")

    await manage_schedules(ctx, action="pause", schedule_id=short)
    assert (await ctx.services.schedules.get(record.id, ctx.turn.user_id)).status == "paused"
    with pytest.raises(InvalidInput, match="already paused"):
        await manage_schedules(ctx, action="pause", schedule_id=short)
    text, _ = await manage_schedules(ctx, action="resume", schedule_id=record.id)
    resumed = await ctx.services.schedules.get(record.id, ctx.turn.user_id)
    assert resumed.status == "active" and resumed.next_run_at > utcnow()

    asked = len(chat.asked)
    text, _ = await manage_schedules(
        ctx, action="edit", schedule_id=short, count=4, when="every monday at 9:30"
    )
    assert len(chat.asked) == asked + 1 and "$0.4000" in chat.asked[-1]
    edited = await ctx.services.schedules.get(record.id, ctx.turn.user_id)
    assert (edited.count, edited.kind) == (4, "weekly")
    assert edited.next_run_at.weekday() == 0 or edited.timezone != "UTC"

    await manage_schedules(ctx, action="delete", schedule_id=short)
    with pytest.raises(NotFound, match="No schedule with id"):
        await manage_schedules(ctx, action="pause", schedule_id=record.id)


# --------------------------------------------------------------------------- the scheduler


def _runner_world(ctx: Any, db: Any) -> tuple[Any, BatchStore]:
    from tools.batch_runner import BatchRunner

    batches = BatchStore(db)
    runner = BatchRunner(ctx.services, batches, instance_id=lambda: None)
    return runner, batches


async def _due_schedule(ctx: Any, *, late: timedelta, policy: str | None, **values: Any) -> Any:
    new = NewSchedule(
        name="Owls",
        kind="daily",
        expression="08:00",
        timezone="UTC",
        prompt=values.pop("prompt", "an owl at {theme}"),
        count=values.pop("count", 2),
        next_run_at=utcnow() - late,
        themes=values.pop("themes", ["dawn", "dusk"]),
        backend="seeded:toy-v1",
        missed_policy=policy,
        **values,
    )
    return await ctx.services.schedules.create(ctx.turn.user_id, new)


def _scheduler(ctx: Any, db: Any, missed: str = "run_once") -> Any:
    from chat_app.scheduler import Scheduler

    runner, batches = _runner_world(ctx, db)
    services = replace(ctx.services, batches=runner)
    return Scheduler(
        ctx.services.schedules, runner, batches, services, poll_s=0.1, missed_policy=missed
    )


async def _finished(db: Any, batch_id: str, timeout: float = 30) -> None:
    """Until the batch is done, whichever scheduler's process runs it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await _count(db, Batch, Batch.id == batch_id, Batch.status == "done") == 0:
        assert asyncio.get_running_loop().time() < deadline, f"batch {batch_id} never finished"
        await asyncio.sleep(0.05)


async def _count(db: Any, model: Any, *where: Any) -> int:
    async with db.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(model).where(*where))


async def test_a_due_run_is_a_batch_in_the_schedules_conversation(world, engine):  # noqa: F811
    ctx, _, _ = world
    schedule = await _due_schedule(ctx, late=timedelta(seconds=1), policy=None)
    scheduler = _scheduler(ctx, engine)
    [batch] = await scheduler.tick()
    await scheduler.runner.wait(batch.id)
    assert (batch.thread_id, batch.schedule_id, batch.item_count) == (
        schedule.thread_id,
        schedule.id,
        2,
    )
    assert batch.title.startswith("Owls — run of ")
    items = await scheduler.batches.items(batch.id, ctx.turn.user_id)
    assert [item.prompt_sent for item in items] == ["an owl at dawn"] * 2
    assert await _count(engine, Image, Image.batch_id == batch.id) == 2
    assert await _count(engine, LedgerEntry, LedgerEntry.batch_id == batch.id) == 2
    after = await ctx.services.schedules.get(schedule.id, ctx.turn.user_id)
    assert after.next_run_at > utcnow() and after.last_batch_id == batch.id
    assert after.theme_index == 1  # the next run is at dusk
    assert await scheduler.tick() == []  # not due again until tomorrow
    # /cost's lines: the run counts under its schedule, not under the user's batches.
    [cost] = await ctx.services.ledger.batch_costs(ctx.turn.user_id, 30)
    assert (cost.batch_id, cost.schedule_name, cost.count) == (batch.id, "Owls", 2)
    assert cost_report._schedules([cost]).startswith("**Schedules: $0.2000** over 1 schedule.")
    assert "| Owls | `" in cost_report._schedules([cost])


@pytest.mark.parametrize("policy", ["run_once", "skip"])
async def test_a_run_missed_while_down_follows_the_policy(world, engine, policy):  # noqa: F811
    ctx, _, _ = world
    # Missed three days ago; the schedule says nothing, so the setting decides.
    schedule = await _due_schedule(ctx, late=timedelta(days=3), policy=None, count=1)
    scheduler = _scheduler(ctx, engine, missed=policy)
    started = await scheduler.tick()
    for batch in started:
        await scheduler.runner.wait(batch.id)
    assert len(started) == (1 if policy == "run_once" else 0)
    assert await _count(engine, Batch) == len(started)  # once, not once per missed day
    after = await ctx.services.schedules.get(schedule.id, ctx.turn.user_id)
    assert after.next_run_at > utcnow()
    assert after.theme_index == len(started)
    assert await scheduler.tick() == []
    # The schedule's own policy wins over the setting.
    other = "skip" if policy == "run_once" else "run_once"
    await _due_schedule(ctx, late=timedelta(days=1), policy=other, count=1)
    again = await scheduler.tick()
    for batch in again:
        await scheduler.runner.wait(batch.id)
    assert len(again) == (1 if other == "run_once" else 0)


async def test_two_schedulers_racing_fire_a_due_time_once(world, engine):  # noqa: F811
    ctx, _, _ = world
    await _due_schedule(ctx, late=timedelta(seconds=1), policy=None, count=1)
    first, second = _scheduler(ctx, engine), _scheduler(ctx, engine)
    now = utcnow()
    results = await asyncio.gather(*(s.tick(now) for s in (first, second, first, second)))
    started = [batch for result in results for batch in result]
    assert len(started) == 1
    await _finished(engine, started[0].id)
    assert await _count(engine, Batch) == 1
    assert await _count(engine, Image) == 1


# --------------------------------------------------------------------------- end to end


async def _store_schedule(db: Any, user_id: str) -> Any:
    """A schedule due now, made through the store on the apps' database (as the tool does
    after the user's yes), so the test does not wait for a clock time."""
    return await ScheduleStore(db).create(
        user_id,
        NewSchedule(
            name="Morning owls",
            kind="interval",
            expression="3600s",
            timezone="Europe/London",
            prompt="an owl at {theme}",
            count=2,
            next_run_at=utcnow(),
            themes=["dawn", "dusk"],
            size="1024x1024",
        ),
    )


async def _rows(db: Any, sql: str) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(text(sql))).mappings().all())


@pytest.mark.slow
async def test_two_app_processes_fire_a_schedule_once(tmp_path, fake_openai, db_url):  # noqa: F811
    """Two apps on one database (SQLite file or PostgreSQL), both polling every 0.2 s:
    one run, two images, two charges; the images are the schedule's in the gallery, its
    run is in /cost, and another user cannot touch it."""
    env = {
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "ATELIER_DATABASE_URL": db_url,
        "ATELIER_SCHEDULE_POLL_S": "0.2",
    }
    apps = [AppProcess(tmp_path / "data", env).start()]
    apps.append(AppProcess(tmp_path / "data", env).start())
    db = create_engine(db_url)
    try:
        [admin] = await _rows(db, "SELECT id FROM users WHERE identifier = 'admin'")
        schedule = await _store_schedule(db, admin["id"])

        async def batch_statuses() -> list[str]:
            return [r["status"] for r in await _rows(db, "SELECT status FROM batches")]

        deadline = asyncio.get_running_loop().time() + 60
        while (statuses := await batch_statuses()) != ["done"]:
            assert asyncio.get_running_loop().time() < deadline, statuses
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # both apps poll several more times: nothing fires again
        [batch] = await _rows(db, "SELECT * FROM batches")
        assert (batch["schedule_id"], batch["thread_id"]) == (schedule.id, schedule.thread_id)
        images = await _rows(db, "SELECT * FROM images")
        assert len(images) == 2 and {i["batch_id"] for i in images} == {batch["id"]}
        assert all("an owl at dawn" in i["prompt_sent"] for i in images)
        entries = await _rows(db, "SELECT * FROM ledger_entries")
        assert [(e["batch_id"], e["status"]) for e in entries] == [(batch["id"], "settled")] * 2
        assert len(fake_openai.requests_to("/images/generations")) == 2
        [row] = await _rows(db, "SELECT theme_index, last_batch_id FROM schedules")
        assert (row["theme_index"], row["last_batch_id"]) == (1, batch["id"])
        started = [app for app in apps if "schedule_run_started" in app.log()]
        assert len(started) == 1

        # The gallery shows them as the schedule's, on either app.
        cookie = login_cookie(apps[1].base_url, "admin", ADMIN_PASSWORD)
        for query in ("origin=schedule", f"schedule={schedule.id}", f"batch={batch['id']}"):
            answer = httpx.get(
                f"{apps[1].base_url}/api/gallery/items?{query}",
                headers={"Cookie": cookie},
                timeout=30,
            )
            assert {i["id"] for i in answer.json()["items"]} == {i["id"] for i in images}
        chat_only = httpx.get(
            f"{apps[0].base_url}/api/gallery/items?origin=chat",
            headers={"Cookie": cookie},
            timeout=30,
        )
        assert chat_only.json()["items"] == []

        # /cost has its own line for the schedule (and none for plain batches).
        chat = ChatSession(apps[0].base_url, cookie)
        await chat.connect()
        report = "\n".join(outputs(await chat.send("/cost")))
        assert "**Schedules: $" in report and "| Morning owls |" in report, report
        assert "**Batches:** nothing spent." in report
        listed = "\n".join(outputs(await chat.send("/schedule list")))
        assert f"`{schedule.id[:8]}`" in listed and "Morning owls" in listed, listed
        await chat.close()

        # Someone else cannot pause or delete it, by its id or its short id.
        await UserStore(session_factory(db)).add("mallory", "mallory-password-1")
        other = ChatSession(
            apps[0].base_url, login_cookie(apps[0].base_url, "mallory", "mallory-password-1")
        )
        await other.connect()
        for command in (f"/schedule pause {schedule.id}", f"/schedule delete {schedule.id[:8]}"):
            reply = "\n".join(outputs(await other.send(command)))
            assert "No schedule with id" in reply, reply
        await other.close()
        [row] = await _rows(db, "SELECT status FROM schedules")
        assert row["status"] == "active"
    finally:
        await db.dispose()
        for app in apps:
            app.stop()
