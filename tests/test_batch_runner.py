"""Batches (issue 17): items run concurrently, checked, retried, stopped by a budget,
paused, stopped, and resumed after a kill -9 without paying twice.

The real OpenAI backend talks to the fake OpenAI server (real client, real wire format)
with gpt-image-1-mini at quality low, which the built-in price table prices at $0.005 an
image whether estimated or settled, so sums are exact. Failures are injected at the fake
(`fail_next`, `answer_next`, prompt keywords); quality checks are the real rule checks on
the fake's known pictures (DISC_TEST: an off-centre disc on white passes "background",
a plain prompt's coloured backdrop fails it). Everything is read back from the database.
"""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from memory.batches import BatchItemRecord, BatchRecord, BatchStore, NewBatchItem
from memory.db import create_engine, migrate, session_factory
from memory.images import ImageStore
from memory.instances import AppInstances
from memory.ledger import Ledger, OperatorLimits
from memory.media_store import MediaStore
from memory.models import Image as ImageRow
from memory.users import UserStore
from pipelines import provider_limits
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.fakes.openai_server import DISC_TEST, FakeOpenAI
from tests.tool_helpers import ledger_entries
from tests.waiting import wait_until
from tools.batch_runner import BatchRunner, BatchSpec, BatchSummary
from tools.context import Services, ToolContext, Turn

THREAD = "5c1d2e3f-98f4-4b3c-9d55-2e0f0c7c1a11"
MODEL = "gpt-image-1-mini"
PRICE = Decimal("0.005")  # gpt-image-1-mini, low, 1024x1024, in prices.toml
GENERATIONS = "/images/generations"
D = Decimal


def _services(tmp_path: Path, engine: Any, fake: FakeOpenAI, **more: Any) -> Services:  # noqa: F811
    backend = OpenAIImages("sk-test", MODEL, fake.base_url, max_retries=0)
    return Services(
        backends=BackendRegistry({"openai": backend}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        prices=PriceTable.load(),
        ledger=more.pop("ledger", None) or Ledger(engine),
        operator_limits=more.pop("limits", None) or OperatorLimits(confirm_above_usd=D("100")),
        **more,
    )


class World:
    def __init__(self, tmp_path: Path, engine: Any, fake: FakeOpenAI, **more: Any) -> None:  # noqa: F811
        self.engine, self.fake = engine, fake
        self.services = _services(tmp_path, engine, fake, **more)
        self.store = BatchStore(engine)
        self.runner = BatchRunner(self.services, self.store, instance_id=lambda: None)

    def one_item_per_slot(self) -> None:
        """Only as many items under way as the provider takes requests, so a test can
        tell exactly which items a pause or stop caught in flight."""
        self.runner.window = 1
        self.user_id = ""

    async def account(self) -> None:
        account = await UserStore(session_factory(self.engine)).add("ada", "password-123")
        self.user_id = account.id

    @property
    def ctx(self) -> ToolContext:
        return ToolContext(
            services=self.services, turn=Turn(user_id=self.user_id, thread_id=THREAD)
        )

    async def batch(self, prompts: list[str], spec: BatchSpec, **more: Any) -> BatchRecord:
        return await self.store.create(
            user_id=self.user_id,
            thread_id=THREAD,
            title="Objects",
            spec=spec.to_dict(),
            items=[NewBatchItem(label=f"object {i}", prompt_sent=p) for i, p in enumerate(prompts)],
            estimate_usd=PRICE * len(prompts),
            instance_id=more.pop("instance_id", None),
        )

    async def items(self, batch: BatchRecord) -> list[BatchItemRecord]:
        return await self.store.items(batch.id, self.user_id)


SPEC = BatchSpec(backend="openai", model=MODEL, size="1024x1024", quality="low")


@pytest.fixture
async def sqlite_engine(tmp_path):
    made = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    try:
        await migrate(made)
        yield made
    finally:
        await made.dispose()


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (1024, 1024), colour).save(out, "PNG")
    return out.getvalue()


def _sent_prompts(fake: FakeOpenAI) -> list[str]:
    return [r.json["prompt"] for r in fake.requests_to(GENERATIONS) if r.json]


async def _image_costs(engine: Any, batch_id: str) -> tuple[int, Decimal]:  # noqa: F811
    async with engine.connect() as conn:
        rows = (await conn.execute(select(ImageRow).where(ImageRow.batch_id == batch_id))).all()
    return len(rows), sum((D(str(r.cost_usd)) for r in rows), D(0))


# --------------------------------------------------------------------------- failures, QC


async def test_thirty_items_with_failures_and_checks_all_end_with_reasons(
    tmp_path, sqlite_engine, fake_openai
):
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    prompts = [f"object {i} {DISC_TEST}" for i in range(30)]
    prompts[20] = "object 20 FAIL_SERVER"  # every try a 500: fails after 3 tries
    prompts[22] = "object 22 FAIL_MODERATION"  # refused: no retry helps
    prompts[25] = prompts[28] = "a plain object"  # coloured backdrop: fails its check
    spec = BatchSpec(**{**SPEC.to_dict(), "checks": ("background",)})
    batch = await world.batch(prompts, spec)
    # The first requests meet two 500s, a 429 asking to wait 1 s, a malformed answer and
    # a grey picture (a valid answer that fails the check).
    fake_openai.fail_next(GENERATIONS, status=500, times=2)
    fake_openai.fail_next(
        GENERATIONS, status=429, code="rate_limit_exceeded", headers={"retry-after": "1"}
    )
    fake_openai.answer_next(GENERATIONS, {"created": 1, "data": "not a list"})
    grey = base64.b64encode(_png((128, 128, 128))).decode()
    fake_openai.answer_next(GENERATIONS, {"created": 1, "data": [{"b64_json": grey}]})
    await world.runner.start(world.ctx, batch, None)
    await world.runner.wait(batch.id)

    items = await world.items(batch)
    assert [i.position for i in items] == list(range(30))
    assert {i.status for i in items} <= {"done", "failed"}
    failed = {i.position: i.error for i in items if i.status == "failed"}
    assert set(failed) == {20, 22, 25, 28}
    assert failed[20].startswith("Provider error after 3 attempts: OpenAI had a server error")
    assert "safety system" in failed[22] and len(items[22].attempts) == 1
    for position in (25, 28):
        assert failed[position].startswith("Failed quality checks after 3 attempts:")
        assert "background" in failed[position].lower()
        seeds = [a["seed"] for a in items[position].attempts]
        assert len(set(seeds)) == 3  # a new seed for every retry after a failed check
        assert items[position].image_ids and items[position].qc_passed is False
    # Provider errors were retried with the same seed, failed checks with a new one.
    for item in items:
        for before, after in zip(item.attempts, item.attempts[1:], strict=False):
            same = before["seed"] == after["seed"]
            assert same if before["outcome"] == "error" else not same
    done = [i for i in items if i.status == "done"]
    retried = [i for i in done if len(i.attempts) > 1]
    outcomes = Counter(a["outcome"] for i in retried for a in i.attempts[:-1])
    assert outcomes == {"error": 3, "qc_failed": 1}  # two 500s, the malformed, the grey
    assert all(i.qc_passed and i.qc_score is not None for i in done)
    assert {"background"} == set(done[0].attempts[-1]["scores"])
    # The 429 paused the provider and was sent again: it is no attempt of anyone's.
    assert len(provider_limits.gate("openai").pauses) == 1
    # Money: every call that made an image was settled at its cost, nothing else.
    attempts_made = sum(1 for i in items for a in i.attempts if a["image_ids"])
    entries = await ledger_entries(sqlite_engine)
    settled = [e for e in entries if e.status == "settled"]
    assert len(settled) == attempts_made
    assert {e.status for e in entries} <= {"settled", "released"}
    assert {e.batch_id for e in entries} == {batch.id}
    ledger_total = sum((D(str(e.actual_usd)) for e in settled), D(0))
    image_count, image_total = await _image_costs(sqlite_engine, batch.id)
    assert image_count == attempts_made
    assert ledger_total == sum((i.cost_usd for i in items), D(0)) == image_total
    assert ledger_total == PRICE * attempts_made
    final = await world.store.get(batch.id, world.user_id)
    assert final.status == "done" and final.finished_at is not None


# --------------------------------------------------------------------------- budget


@pytest.fixture
def eight_at_once():
    before = provider_limits.limit_for("openai")
    provider_limits.configure({"openai": 8})
    yield
    provider_limits.configure({"openai": before})


async def test_a_budget_for_twelve_stops_at_twelve_with_eight_at_once(
    tmp_path,
    engine,  # noqa: F811
    fake_openai,
    eight_at_once,
):
    fake_openai.latency_s = 0.05
    limits = OperatorLimits(confirm_above_usd=D("100"), thread_usd=PRICE * 12)
    world = World(tmp_path, engine, fake_openai, limits=limits)
    await world.account()
    batch = await world.batch([f"object {i} {DISC_TEST}" for i in range(30)], SPEC)
    await world.runner.start(world.ctx, batch, None)
    await world.runner.wait(batch.id)
    items = await world.items(batch)
    assert Counter(i.status for i in items) == {"done": 12, "pending": 18}
    assert [i.status for i in items[:12]] == ["done"] * 12  # in position order
    final = await world.store.get(batch.id, world.user_id)
    assert final.status == "stopped"
    assert final.stop_reason.startswith("Budget reached after 12 of 30 items: ")
    assert "over the budget for this conversation" in final.stop_reason
    assert len(fake_openai.requests_to(GENERATIONS)) == 12
    entries = await ledger_entries(engine)
    assert [e.status for e in entries] == ["settled"] * 12
    assert sum(D(str(e.actual_usd)) for e in entries) == PRICE * 12  # no overshoot
    assert provider_limits.gate("openai").peak > 1


# --------------------------------------------------------------------------- concurrency


class Watcher:
    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, int], list[int], float | None]] = []
        self.summaries: list[tuple[BatchRecord, BatchSummary]] = []

    async def update(self, batch, counts, running, eta_s) -> None:
        self.updates.append((batch.status, dict(counts), [i.position for i in running], eta_s))

    async def finished(self, batch, summary) -> None:
        self.summaries.append((batch, summary))


async def test_items_overlap_are_stored_in_order_and_the_watcher_hears(
    tmp_path, sqlite_engine, fake_openai
):
    fake_openai.latency_s = 0.3
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    batch = await world.batch([f"object {i} {DISC_TEST}" for i in range(8)], SPEC)
    watcher = Watcher()
    await world.runner.start(world.ctx, batch, watcher)
    await world.runner.wait(batch.id)
    items = await world.items(batch)
    assert [i.status for i in items] == ["done"] * 8
    # The requests overlapped, up to the provider's limit.
    assert provider_limits.gate("openai").peak == provider_limits.limit_for("openai") == 4
    spans = [(a["started_at"], a["ended_at"]) for i in items for a in i.attempts]
    assert any(s2 < e1 for (s1, e1), (s2, _) in zip(spans, spans[1:], strict=False))
    # Whatever order they finished in, the rows read back in position order.
    assert [i.label for i in items] == [f"object {n}" for n in range(8)]
    stored = await world.services.images.for_thread(THREAD, world.user_id)
    assert sorted(r.id for r in stored) == sorted(i.image_ids[0] for i in items)
    # The watcher heard progress (running items by label order) and the end.
    assert watcher.updates and all(u[0] == "running" for u in watcher.updates)
    assert any(u[2] for u in watcher.updates)
    [(final, summary)] = watcher.summaries
    assert final.status == "done" and summary.done == 8 and summary.failed == []
    assert summary.cost_usd == PRICE * 8 and summary.elapsed_s > 0
    sheet = Image.open(io.BytesIO(summary.contact_sheet))
    assert sheet.format == "PNG" and sheet.width == 3 * (256 + 8) + 8  # 3 columns for 8


# --------------------------------------------------------------------------- pause, stop


async def test_pause_finishes_what_runs_resume_continues_stop_cancels(
    tmp_path, sqlite_engine, fake_openai
):
    fake_openai.latency_s = 0.8  # long enough that the pause lands while 4 are in flight
    world = World(tmp_path, sqlite_engine, fake_openai)
    world.one_item_per_slot()
    await world.account()
    batch = await world.batch([f"object {i} {DISC_TEST}" for i in range(12)], SPEC)
    watcher = Watcher()
    await world.runner.start(world.ctx, batch, watcher)
    await wait_until(lambda: len(fake_openai.requests_to(GENERATIONS)) == 4, 10, "4 in flight")
    paused = await world.runner.pause(batch.id, world.user_id)
    assert paused.status == "paused"
    await world.runner.wait(batch.id)  # the four in flight finish, nothing else starts
    items = await world.items(batch)
    assert Counter(i.status for i in items) == {"done": 4, "pending": 8}
    assert len(fake_openai.requests_to(GENERATIONS)) == 4 and not watcher.summaries
    await world.runner.resume(batch.id, world.user_id)
    await wait_until(lambda: len(fake_openai.requests_to(GENERATIONS)) == 8, 10, "4 more")
    await world.runner.stop(batch.id, world.user_id)
    await world.runner.wait(batch.id)
    items = await world.items(batch)
    assert Counter(i.status for i in items) == {"done": 4, "failed": 4, "pending": 4}
    assert {i.error for i in items if i.status == "failed"} == {"stopped"}
    final = await world.store.get(batch.id, world.user_id)
    assert (final.status, final.stop_reason) == ("stopped", "Stopped by you.")
    entries = await ledger_entries(sqlite_engine)
    assert Counter(e.status for e in entries) == {"settled": 4, "released": 4}
    [(_, summary)] = watcher.summaries
    assert (summary.done, len(summary.failed), summary.not_run) == (4, 4, 4)
    assert summary.status == "stopped"


# --------------------------------------------------------------------------- crash


class FreezingLedger(Ledger):
    """A process that stops just after storing an image, before settling its charge:
    the settles after the first `settles` never return."""

    settles = 2

    async def settle(self, *args: Any, **kwargs: Any) -> Any:
        if self.settles <= 0:
            await asyncio.Event().wait()
        self.settles -= 1
        return await super().settle(*args, **kwargs)


async def _worker(url: str, data_dir: str, base_url: str, batch_id: str, user_id: str) -> None:
    """Process A: runs the batch one item at a time and freezes on its third settle."""
    made = create_engine(url)
    ledger = FreezingLedger(made)
    instances = AppInstances(made, ledger)
    await instances.register()
    provider_limits.configure({"openai": 1})
    fake = type("Fake", (), {"base_url": base_url})()
    services = _services(Path(data_dir), made, fake, ledger=ledger)
    store = BatchStore(made)
    runner = BatchRunner(services, store, instance_id=lambda: instances.id, window=1)
    assert await runner.adopt(await instances.alive()) == [batch_id]  # nobody ran it
    await asyncio.Event().wait()


def worker_main() -> None:
    asyncio.run(_worker(*sys.argv[1:6]))


async def test_a_batch_killed_midway_resumes_without_paying_twice(
    tmp_path,
    db_url,  # noqa: F811
    engine,  # noqa: F811
    fake_openai,
):
    fake_openai.latency_s = 0.1
    world = World(tmp_path, engine, fake_openai)
    await world.account()
    prompts = [f"object {i} {DISC_TEST}" for i in range(6)]
    batch = await world.batch(prompts, SPEC)
    code = "from tests.test_batch_runner import worker_main; worker_main()"
    args = [str(tmp_path), fake_openai.base_url, batch.id, world.user_id]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, db_url, *args, cwd=Path(__file__).parent.parent
    )
    try:
        # Items 0 and 1 done; item 2's image stored, its charge never settled.
        async def stored() -> int:
            return (await _image_costs(engine, batch.id))[0]

        deadline = asyncio.get_running_loop().time() + 60
        while await stored() < 3:
            assert proc.returncode is None, "the worker died on its own"
            assert asyncio.get_running_loop().time() < deadline, "the worker made no images"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(fake_openai.requests_to(GENERATIONS)) == 3  # frozen, nothing more sent
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        await proc.wait()
    items = await world.items(batch)
    assert [i.status for i in items[:3]] == ["done", "done", "running"]
    assert items[2].reservation_id is not None and not items[2].attempts

    # Process B starts: the dead one's reservation is released as interrupted, then
    # B adopts the batch and finishes it.
    instances = AppInstances(engine, world.services.ledger)
    await instances.register()
    assert await instances.release_dead() == 1
    runner = BatchRunner(world.services, world.store, instance_id=lambda: instances.id)
    assert await runner.adopt(await instances.alive()) == [batch.id]
    await runner.wait(batch.id)

    items = await world.items(batch)
    assert [i.status for i in items] == ["done"] * 6
    assert Counter(_sent_prompts(fake_openai)) == Counter(prompts)  # each generated once
    [recovered] = items[2].attempts
    assert recovered["reason"] == "Made before a restart; not generated again."
    assert len(items[2].image_ids) == 1
    entries = await ledger_entries(engine)
    assert [e.status for e in entries] == ["settled"] * 6
    assert all(e.interrupted_at is None for e in entries)
    ledger_total = sum((D(str(e.actual_usd)) for e in entries), D(0))
    image_count, image_total = await _image_costs(engine, batch.id)
    assert image_count == 6
    assert ledger_total == sum((i.cost_usd for i in items), D(0)) == image_total == PRICE * 6
    assert (await world.store.get(batch.id, world.user_id)).status == "done"


async def test_shutdown_hands_items_back_and_another_process_finishes_them(
    tmp_path, sqlite_engine, fake_openai
):
    fake_openai.latency_s = 0.4
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    instances = AppInstances(sqlite_engine, world.services.ledger)
    await instances.register()
    world.runner = BatchRunner(
        world.services, world.store, instance_id=lambda: instances.id, window=1
    )
    batch = await world.batch([f"object {i} {DISC_TEST}" for i in range(6)], SPEC)
    await world.runner.start(world.ctx, batch, None)
    await wait_until(lambda: len(fake_openai.requests_to(GENERATIONS)) == 4, 10, "4 in flight")
    await world.runner.shutdown()
    items = await world.items(batch)
    assert [i.status for i in items] == ["pending"] * 6 and not any(i.attempts for i in items)
    assert (await world.store.get(batch.id, world.user_id)).instance_id is None
    assert [e.status for e in await ledger_entries(sqlite_engine)] == ["released"] * 4
    # The next start-up adopts it and finishes it.
    runner = BatchRunner(world.services, world.store, instance_id=lambda: instances.id)
    assert await runner.adopt(await instances.alive()) == [batch.id]
    await runner.wait(batch.id)
    assert [i.status for i in await world.items(batch)] == ["done"] * 6
    entries = await ledger_entries(sqlite_engine)
    assert Counter(e.status for e in entries) == {"released": 4, "settled": 6}


async def test_another_process_pauses_resumes_and_stops_the_owners_batch(
    tmp_path, sqlite_engine, fake_openai
):
    fake_openai.latency_s = 0.3
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    owner = BatchRunner(world.services, world.store, instance_id=lambda: "a" * 8, window=1)
    other = BatchRunner(world.services, world.store, instance_id=lambda: "b" * 8)
    batch = await world.batch([f"object {i} {DISC_TEST}" for i in range(12)], SPEC)
    watcher = Watcher()
    await owner.start(world.ctx, batch, watcher)
    await wait_until(lambda: len(fake_openai.requests_to(GENERATIONS)) == 4, 10, "4 in flight")
    await other.pause(batch.id, world.user_id)  # the row only: the owner reads it
    await owner.wait(batch.id)
    sent = len(fake_openai.requests_to(GENERATIONS))
    assert sent <= 8 and Counter(i.status for i in await world.items(batch))["running"] == 0
    await asyncio.sleep(0.7)
    assert len(fake_openai.requests_to(GENERATIONS)) == sent  # nothing new while paused
    await other.resume(batch.id, world.user_id)
    assert other.running() == []  # the owner runs it on, not the process that resumed
    await wait_until(lambda: len(fake_openai.requests_to(GENERATIONS)) > sent, 10, "more")
    await other.stop(batch.id, world.user_id)
    await owner.wait(batch.id)
    items = await world.items(batch)
    assert {i.status for i in items} <= {"done", "failed", "pending"}
    assert {i.error for i in items if i.status == "failed"} <= {"stopped"}
    [(final, summary)] = watcher.summaries
    assert final.status == "stopped" and summary.done == Counter(i.status for i in items)["done"]
