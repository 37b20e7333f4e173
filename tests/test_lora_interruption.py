"""Trainings belong to the app process that runs them: a start-up interrupts only the dead's.

Several app processes may share one database. A start-up marks interrupted the trainings
left queued/running by a process that is dead by the ledger's rule (memory/instances.py:
silent for three heartbeats, its row gone, or its pid gone on this machine); a live
process's trainings keep running, and rows made before trainings named their process are
interrupted as they always were. On SQLite and PostgreSQL; the tool-level test runs a
real training on the fake Replicate through `train_lora`.
"""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from memory.db import session_factory
from memory.images import ImageStore
from memory.instances import AppInstances
from memory.ledger import Ledger
from memory.loras import LoraStore, NewLora
from memory.media_store import MediaStore
from memory.models import AppInstance, LoraModel, Thread, utcnow
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from pipelines.training.replicate_training import ReplicateLoraTrainer
from tests.db_fixtures import *  # noqa: F403
from tests.lora_fixtures import picture
from tests.tool_helpers import ChatRecorder, tool_context, training_jobs, with_turn
from tools.train_lora import train_lora

HERE = "this-boot/pid:[1]"  # the machine every in-process instance claims to be on
USER = "0c6f8a3e-2b7d-4e59-9a41-7d2e5b8c1f30"
THREAD = "6b1f3c52-8f0e-4a57-9a0e-3f1c2d4b5a61"


@pytest.fixture
def running_pid() -> Iterator[int]:
    """The pid of a process that runs for the whole test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _instance(engine: Any, **kwargs: Any) -> AppInstances:
    return AppInstances(engine, Ledger(engine), **{"machine": HERE, **kwargs})


async def _running(store: LoraStore, name: str, instance_id: str | None) -> str:
    row = await store.create(
        USER, NewLora(name, "local", "m", "TOK", 100, {}, {}, instance_id=instance_id)
    )
    await store.progress(row.id, step=40, losses=[[40, 0.1]])
    return row.id


async def _age_heartbeat(engine: Any, instance: AppInstances, at: datetime) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(AppInstance).where(AppInstance.id == instance.id).values(heartbeat_at=at)
        )


async def test_a_start_up_interrupts_only_the_trainings_of_dead_processes(engine, running_pid):  # noqa: F811
    store = LoraStore(engine)
    # Live: one on another machine (pids mean nothing there), beating; one here whose
    # pid runs. Dead: one here whose pid has exited (killed, heartbeat still fresh) and
    # one elsewhere silent for longer than three intervals.
    remote = _instance(engine, machine="other-boot/pid:[7]", pid=4242)
    local = _instance(engine, pid=running_pid)
    killed = _instance(engine, pid=_dead_pid())
    silent = _instance(engine, machine="third-boot/pid:[9]", pid=4242)
    for owner in (remote, local, killed, silent):
        await owner.register()
    rows = {
        "remote": await _running(store, "remote", remote.id),
        "local": await _running(store, "local", local.id),
        "killed": await _running(store, "killed", killed.id),
        "silent": await _running(store, "silent", silent.id),
        # Its process's row is gone: it stopped, or another process found it dead.
        "orphan": await _running(store, "orphan", str(uuid.uuid4())),
        # Made before trainings named their process.
        "unowned": await _running(store, "unowned", None),
    }
    queued = await store.create(
        USER, NewLora("queued", "local", "m", "TOK", 10, {}, {}, instance_id=remote.id)
    )
    done = await _running(store, "done", killed.id)
    await store.update(done, USER, status="succeeded")
    later = utcnow() + timedelta(seconds=5)
    await _age_heartbeat(engine, silent, later - timedelta(seconds=31))
    for owner in (remote, local, killed):
        await owner.beat(later)

    starting = _instance(engine)  # another app process starting on the same database
    await starting.register(later)
    assert await store.mark_interrupted(await starting.alive(later)) == 4

    status = {name: (await store.by_id(i, USER)).status for name, i in rows.items()}
    assert status == {
        "remote": "running",
        "local": "running",
        "killed": "interrupted",
        "silent": "interrupted",
        "orphan": "interrupted",
        "unowned": "interrupted",
    }
    assert (await store.by_id(queued.id, USER)).status == "queued"
    assert (await store.by_id(done, USER)).status == "succeeded"  # final rows stay final
    interrupted = await store.by_id(rows["killed"], USER)
    assert interrupted.step == 40 and interrupted.finished_at is not None
    assert interrupted.error == "The app stopped while this training ran."
    # The live ones go on: progress is still written, and a second start-up leaves them.
    await store.progress(rows["remote"], step=41, losses=[[40, 0.1], [41, 0.09]])
    assert (await store.by_id(rows["remote"], USER)).step == 41
    assert await store.mark_interrupted(await starting.alive(later)) == 0


async def test_without_live_processes_known_only_unowned_trainings_are_interrupted(engine):  # noqa: F811
    """A process without instances cannot tell who is dead: it leaves owned rows alone."""
    store = LoraStore(engine)
    owner = _instance(engine, machine="other-boot/pid:[7]", pid=4242)
    await owner.register()
    owned = await _running(store, "owned", owner.id)
    unowned = await _running(store, "unowned", None)
    assert await store.mark_interrupted() == 1
    assert (await store.by_id(owned, USER)).status == "running"
    assert (await store.by_id(unowned, USER)).status == "interrupted"


async def test_a_live_process_interrupts_a_dead_ones_trainings_on_its_next_beat(engine):  # noqa: F811
    """No restart needed: the heartbeat's sweep finds a process that died meanwhile."""
    store = LoraStore(engine)
    watcher = _instance(engine, machine="other-boot/pid:[7]", pid=4242)
    watcher.sweeps.append(store.mark_interrupted)
    dying = _instance(engine, machine="third-boot/pid:[9]", pid=4242)
    for owner in (watcher, dying):
        await owner.register()
    mine = await _running(store, "mine", watcher.id)
    theirs = await _running(store, "theirs", dying.id)
    await watcher.one_round()
    assert (await store.by_id(theirs, USER)).status == "running"  # still beating
    await _age_heartbeat(engine, dying, utcnow() - timedelta(seconds=31))
    await watcher.one_round()
    assert (await store.by_id(theirs, USER)).status == "interrupted"
    assert (await store.by_id(mine, USER)).status == "running"


# --------------------------------------------------------------------------- as a tool


class Chat(ChatRecorder):
    """Answers yes to the training's confirmation; nobody watches its progress."""

    def __init__(self) -> None:
        super().__init__(answer=True)


async def test_a_training_started_by_a_tool_is_its_processs_until_it_dies(
    engine,  # noqa: F811
    tmp_path: Path,
    fake_replicate,
):
    """The row names the process whose ledger reserved it; another process's start-up
    leaves it running while that process beats, and interrupts it once it is silent."""
    fake_replicate.configure(processing_polls=100_000)  # still training on Replicate
    account = await UserStore(session_factory(engine)).add("pat", "password-123")
    async with engine.begin() as conn:  # the conversation the training is asked in
        await conn.execute(insert(Thread).values(id=THREAD, user_id=account.id))
    ledger = Ledger(engine)
    here = AppInstances(engine, ledger, machine="other-boot/pid:[7]", pid=4242)
    await here.register()
    trainer = ReplicateLoraTrainer(
        fake_replicate.api_token, base_url=fake_replicate.base_url, poll_interval_s=0.05
    )
    jobs = training_jobs(LoraStore(engine), tmp_path / "loras", replicate=trainer)
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        prices=PriceTable.load(),
        ledger=ledger,
        port=Chat(),
        trainings=jobs,
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(3):
            archive.writestr(f"dog{i}.png", picture(i, (64, 64)))
    zipped = with_turn(ctx, attached_zips=(("dogs.zip", out.getvalue()),))
    try:
        await train_lora(
            zipped,
            "dog",
            backend="replicate",
            steps=300,
            resolution=64,
            licence="own photos",
            destination="me/my-dog",
        )
        [record] = jobs.running(account.id)
        async with engine.connect() as conn:
            owner = await conn.scalar(
                select(LoraModel.instance_id).where(LoraModel.id == record.id)
            )
        assert owner == here.id

        other = _instance(engine)  # a second app process starts on the same database
        await other.register()
        assert await jobs.loras.mark_interrupted(await other.alive()) == 0
        assert (await jobs.loras.by_id(record.id, account.id)).status in ("queued", "running")

        # This process falls silent (hung, or its host is gone): the next start-up sees it.
        later = utcnow() + timedelta(seconds=31)
        assert await jobs.loras.mark_interrupted(await other.alive(later)) == 1
        after = await jobs.loras.by_id(record.id, account.id)
        assert after.status == "interrupted"
    finally:
        await jobs.stop_all()
