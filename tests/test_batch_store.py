"""The batch store: batches and items read back as written, owner-only, and the steps that
hand out work (next item, adoption after a crash, attempts) correct with two processes.

Every test runs on SQLite and on PostgreSQL. "Two processes" are two stores on two
engines of the same database, racing with asyncio.gather.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from decimal import Decimal

import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import InvalidInput, NotFound
from memory.batches import BatchRecord, BatchStore, NewBatchItem
from memory.db import create_engine, session_factory
from memory.images import ImageStore, NewImage
from memory.instances import AppInstances
from memory.ledger import Ledger
from memory.media_store import MediaStore
from memory.models import Thread, new_id
from memory.users import UserStore
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures

D = Decimal


@dataclass
class World:
    store: BatchStore
    engine: AsyncEngine
    user: str
    thread: str
    other_user: str

    async def batch(self, n: int = 3, **kwargs) -> BatchRecord:
        items = [NewBatchItem(f"object {i}", f"a drawing of object {i}") for i in range(n)]
        return await self.store.create(
            **{
                "user_id": self.user,
                "thread_id": self.thread,
                "title": "Crayon objects",
                "spec": {"style": "crayon", "qc_retries": 2},
                "items": items,
                "estimate_usd": D("0.120000"),
                "instance_id": None,
                **kwargs,
            }
        )


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


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
    return World(BatchStore(engine), engine, alice.id, await _thread(engine, alice.id), mallory.id)


@pytest.fixture
async def second_engine(db_url):  # noqa: F811
    """Another engine (another process's pool) on the same, already migrated database."""
    other = create_engine(db_url)
    yield other
    await other.dispose()


async def test_a_batch_and_its_items_read_back_in_order(world):
    created = await world.batch(3, schedule_id=new_id(), message_id=new_id(), instance_id="proc-1")
    got = await world.store.get(created.id, world.user)
    assert got == created
    assert (got.status, got.item_count, got.estimate_usd) == ("running", 3, D("0.12"))
    assert got.spec == {"style": "crayon", "qc_retries": 2}
    assert got.created_at.tzinfo is not None and got.finished_at is None
    items = await world.store.items(created.id, world.user)
    assert [(i.position, i.label, i.status, i.count) for i in items] == [
        (0, "object 0", "pending", 1),
        (1, "object 1", "pending", 1),
        (2, "object 2", "pending", 1),
    ]
    assert items[0].attempts == [] and items[0].cost_usd == 0 and items[0].image_ids == []
    assert await world.store.counts(created.id) == {
        "pending": 3,
        "running": 0,
        "done": 0,
        "failed": 0,
    }
    second = await world.batch(1)
    assert [b.id for b in await world.store.for_user(world.user)] == [second.id, created.id]
    assert [b.id for b in await world.store.for_user(world.user, limit=1)] == [second.id]
    assert [b.id for b in await world.store.for_thread(world.thread, world.user)] == [
        second.id,
        created.id,
    ]


async def test_another_users_batch_is_not_found_and_unchanged(world):
    batch = await world.batch(2)
    message = f"No batch with id {batch.id} in your account."
    for call in (
        world.store.get(batch.id, world.other_user),
        world.store.items(batch.id, world.other_user),
        world.store.set_status(batch.id, world.other_user, "stopped"),
    ):
        with pytest.raises(NotFound, match=message):
            await call
    missing = new_id()
    with pytest.raises(NotFound, match=f"No batch with id {missing} in your account."):
        await world.store.get(missing, world.user)
    with pytest.raises(InvalidInput, match="Invalid batch id"):
        await world.store.get("1 OR 1=1", world.user)
    assert await world.store.for_user(world.other_user) == []
    assert await world.store.for_thread(world.thread, world.other_user) == []
    assert (await world.store.get(batch.id, world.user)).status == "running"
    # Nor can a batch be made in someone else's conversation.
    with pytest.raises(NotFound, match="No such conversation"):
        await world.store.create(
            user_id=world.other_user,
            thread_id=world.thread,
            title="sneaky",
            spec={},
            items=[NewBatchItem("x", "x")],
            estimate_usd=D("0"),
            instance_id=None,
        )
    assert await world.store.for_user(world.other_user) == []


async def test_create_refuses_bad_input_and_stores_nothing(world):
    with pytest.raises(InvalidInput, match="at least one item"):
        await world.batch(0)
    with pytest.raises(InvalidInput, match="Item 2: expected a label of 1 to 300"):
        await world.store.create(
            user_id=world.user,
            thread_id=world.thread,
            title="t",
            spec={},
            items=[NewBatchItem("ok", "ok"), NewBatchItem("x" * 301, "p")],
            estimate_usd=D("0"),
            instance_id=None,
        )
    with pytest.raises(InvalidInput, match=r"Item 1 \(cat\): count must be 1 or more"):
        await world.store.create(
            user_id=world.user,
            thread_id=world.thread,
            title="t",
            spec={},
            items=[NewBatchItem("cat", "cat", count=0)],
            estimate_usd=D("0"),
            instance_id=None,
        )
    assert await world.store.for_user(world.user) == []


async def test_status_moves_are_checked_with_clear_messages(world):
    batch = await world.batch(1, instance_id="proc-1")
    paused = await world.store.set_status(batch.id, world.user, "paused")
    assert paused.status == "paused" and paused.instance_id == "proc-1"
    with pytest.raises(InvalidInput, match=f"Batch {batch.id} is already paused."):
        await world.store.set_status(batch.id, world.user, "paused")
    with pytest.raises(InvalidInput, match="is paused: it can be running or stopped, not done"):
        await world.store.set_status(batch.id, world.user, "done")
    assert (await world.store.set_status(batch.id, world.user, "running")).status == "running"
    stopped = await world.store.set_status(
        batch.id, world.user, "stopped", reason="Budget reached after 12 of 30 items."
    )
    assert stopped.status == "stopped" and stopped.instance_id is None
    assert stopped.finished_at is not None
    assert stopped.stop_reason == "Budget reached after 12 of 30 items."
    for status in ("running", "paused", "done", "stopped"):
        with pytest.raises(InvalidInput, match=f"Batch {batch.id} is already stopped."):
            await world.store.set_status(batch.id, world.user, status)
    with pytest.raises(InvalidInput, match="Invalid batch status 'finished'"):
        await world.store.set_status(batch.id, world.user, "finished")

    other = await world.batch(1)
    done = await world.store.set_status(other.id, world.user, "done")
    assert done.status == "done" and done.finished_at is not None
    with pytest.raises(InvalidInput, match="is already done"):
        await world.store.set_status(other.id, world.user, "paused")


async def test_two_processes_never_take_the_same_item(world, second_engine):
    batch = await world.batch(12)
    stores = [world.store, BatchStore(second_engine)]
    taken = await asyncio.gather(*(stores[i % 2].next_pending(batch.id) for i in range(30)))
    items = [item for item in taken if item is not None]
    assert sorted(item.position for item in items) == list(range(12))
    assert all(item.status == "running" for item in items)
    assert await world.store.counts(batch.id) == {
        "pending": 0,
        "running": 12,
        "done": 0,
        "failed": 0,
    }
    assert await world.store.next_pending(batch.id) is None


async def test_next_pending_takes_the_lowest_position_first(world):
    batch = await world.batch(3)
    first = await world.store.next_pending(batch.id)
    assert first is not None and first.position == 0
    await world.store.update_item(first.id, status="pending")  # put back: taken again first
    again = await world.store.next_pending(batch.id)
    assert again is not None and again.id == first.id


async def test_item_updates_and_concurrent_attempts_all_count(world, second_engine):
    batch = await world.batch(1)
    item = await world.store.next_pending(batch.id)
    assert item is not None
    reservation = new_id()
    await world.store.update_item(
        item.id, reservation_id=reservation, seed=42, prompt_sent="a crayon drawing of a cat"
    )
    stores = [world.store, BatchStore(second_engine)]
    await asyncio.gather(
        *(
            stores[n % 2].add_attempt(
                item.id, {"n": n, "seed": n, "outcome": "qc_failed"}, D("0.011000")
            )
            for n in range(20)
        )
    )
    await world.store.update_item(
        item.id, status="done", image_ids=["i1"], qc_score=0.8, qc_passed=True, error=None
    )
    (stored,) = await world.store.items(batch.id, world.user)
    assert sorted(a["n"] for a in stored.attempts) == list(range(20))
    assert stored.cost_usd == D("0.220000")
    assert (stored.status, stored.image_ids, stored.qc_passed) == ("done", ["i1"], True)
    assert (stored.seed, stored.reservation_id) == (42, reservation)
    assert stored.prompt_sent == "a crayon drawing of a cat"
    with pytest.raises(ValueError, match="cannot set"):
        await world.store.update_item(item.id, batch_id=new_id())
    with pytest.raises(ValueError, match="unknown batch item status"):
        await world.store.update_item(item.id, status="lost")


async def test_adoption_takes_only_dead_processes_batches_once(world, second_engine):
    ledger = Ledger(world.engine)
    live = AppInstances(world.engine, ledger, machine="other-boot/pid:[7]", pid=4242)
    me = AppInstances(world.engine, ledger, machine="other-boot/pid:[8]", pid=4243)
    other = AppInstances(second_engine, Ledger(second_engine), machine="b/pid:[9]", pid=4244)
    for instance in (live, me, other):
        await instance.register()
    dead_id = new_id()  # a process whose row is gone: it died and was found dead
    kept = await world.batch(2, instance_id=live.id)
    orphan = await world.batch(3, instance_id=dead_id)
    unowned = await world.batch(1, instance_id=None)
    paused = await world.batch(1, instance_id=dead_id)
    await world.store.set_status(paused.id, world.user, "paused")
    finished = await world.batch(1, instance_id=dead_id)
    await world.store.set_status(finished.id, world.user, "done")

    # The orphan's first item was in flight when its process died, its second done.
    in_flight = await world.store.next_pending(orphan.id)
    finished_item = await world.store.next_pending(orphan.id)
    assert in_flight is not None and finished_item is not None
    reservation = new_id()
    await world.store.update_item(in_flight.id, reservation_id=reservation)
    await world.store.add_attempt(in_flight.id, {"n": 1, "outcome": "error"}, D("0"))
    await world.store.update_item(finished_item.id, status="done")
    kept_item = await world.store.next_pending(kept.id)  # the live process's work

    stores = [world.store, BatchStore(second_engine)]
    mine, theirs = await asyncio.gather(
        stores[0].adopt(await me.alive(), me.id), stores[1].adopt(await other.alive(), other.id)
    )
    assert not set(mine) & set(theirs)
    assert set(mine) | set(theirs) == {orphan.id, unowned.id, paused.id}
    owners = {b: (await world.store.get(b, world.user)).instance_id for b in (*mine, *theirs)}
    assert owners == {**dict.fromkeys(mine, me.id), **dict.fromkeys(theirs, other.id)}
    assert (await world.store.get(kept.id, world.user)).instance_id == live.id
    assert (await world.store.get(finished.id, world.user)).instance_id is None
    assert (await world.store.get(paused.id, world.user)).status == "paused"

    items = {i.id: i for i in await world.store.items(orphan.id, world.user)}
    assert items[in_flight.id].status == "pending"  # to be run (or found stored) again
    assert items[in_flight.id].reservation_id == reservation
    assert items[in_flight.id].attempts == [{"n": 1, "outcome": "error"}]
    assert items[finished_item.id].status == "done"
    assert kept_item is not None
    assert (await world.store.items(kept.id, world.user))[0].status == "running"
    # A second sweep finds nothing: the adopters are alive.
    assert await world.store.adopt(await me.alive(), me.id) == []


async def test_release_hands_a_batch_back(world):
    batch = await world.batch(1, instance_id="proc-1")
    await world.store.release(batch.id, instance_id="proc-2")  # not its holder: no change
    assert (await world.store.get(batch.id, world.user)).instance_id == "proc-1"
    await world.store.release(batch.id)
    assert (await world.store.get(batch.id, world.user)).instance_id is None


async def test_finished_batches_are_told_once(world, second_engine):
    running = await world.batch(1)
    done = await world.batch(1)
    await world.store.set_status(done.id, world.user, "done")
    stopped = await world.batch(1)
    await world.store.set_status(stopped.id, world.user, "stopped", reason="You stopped it.")
    untold = await world.store.untold_finished(world.user, world.thread)
    assert [b.id for b in untold] == [done.id, stopped.id]  # oldest first
    assert running.id not in [b.id for b in untold]
    assert await world.store.untold_finished(world.other_user, world.thread) == []
    stores = [world.store, BatchStore(second_engine)]
    marks = await asyncio.gather(*(stores[i % 2].mark_told(done.id) for i in range(6)))
    assert marks.count(True) == 1
    assert [b.id for b in await world.store.untold_finished(world.user, world.thread)] == [
        stopped.id
    ]


async def test_stored_images_find_an_items_images_from_before_a_crash(world, tmp_path):
    batch = await world.batch(2)
    first, second = await world.store.items(batch.id, world.user)
    images = ImageStore(world.engine, MediaStore(tmp_path / "media"))

    async def record(item_id: str, batch_id: str | None = batch.id) -> str:
        lineage = {"operation": "batch item", "batch_id": batch_id, "item_id": item_id}
        record, _ = await images.record(
            world.thread,
            world.user,
            NewImage(
                data=_png(),
                mime="image/png",
                width=8,
                height=8,
                prompt_typed=item_id,
                prompt_sent=item_id,
                backend="fake",
                model="fake",
                parameters={"lineage": {**lineage, "attempt": 1}},
                batch_id=batch_id,
            ),
        )
        return record.id

    one = await record(first.id)
    two = await record(first.id)
    await record(second.id)
    await record(first.id, batch_id=None)  # made outside the batch
    found = await world.store.stored_images(batch.id, first.id)
    assert [image.id for image in found] == [one, two]
    assert all(image.batch_id == batch.id for image in found)
    assert await world.store.stored_images(batch.id, new_id()) == []


async def test_batch_charges_add_up_per_batch(world):
    ledger = Ledger(world.engine)
    batch = await world.batch(2, schedule_id=None)

    async def charge(usd: str, batch_id: str | None, *, settle: bool = True) -> None:
        entry = await ledger.reserve(
            user_id=world.user,
            thread_id=world.thread,
            backend="openai",
            model="gpt-image-1",
            what="batch",
            estimate_usd=D(usd),
            batch_id=batch_id,
        )
        assert entry.batch_id == batch_id
        if settle:
            await ledger.settle(entry.id, user_id=world.user, actual_usd=D(usd), source="table")

    await charge("0.04", batch.id)
    await charge("0.05", batch.id)
    await charge("0.30", batch.id, settle=False)  # still running: not spent
    await charge("1.00", None)  # a chat request
    (row,) = await ledger.batch_costs(world.user)
    assert (row.batch_id, row.title, row.usd, row.count) == (
        batch.id,
        "Crayon objects",
        D("0.09"),
        2,
    )
    assert (row.schedule_id, row.schedule_name) == (None, None)
    assert await ledger.batch_costs(world.other_user) == []
    with pytest.raises(InvalidInput, match="Invalid batch id"):
        await charge("0.01", "not-a-batch")
