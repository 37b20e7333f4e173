"""The Redis job board: fairness, routing, cancel, retry on a dead worker, exactly-once.

Real Redis (ATELIER_TEST_REDIS_URL, default the local server), a unique key prefix per
test. The "workers" here are the test itself speaking the worker's side of the board
(`WorkerBoard` heartbeats and start/finish calls); `send` records what the dispatcher
would have sent to Celery.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipelines.remote.job_board import (
    DEAD_TWICE,
    WAITER_GONE,
    JobBoard,
    pick_worker,
    queue_positions,
)
from pipelines.remote.worker_board import WorkerBoard
from pipelines.remote.worker_info import WorkerInfo

REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Sent:
    """A `send` that records (worker, job_id, attempt) instead of calling Celery."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.fail_for: set[str] = set()  # worker names whose queue is "unreachable"

    async def __call__(self, worker: str, job_id: str, attempt: int) -> None:
        if worker in self.fail_for:
            raise ConnectionError("broker unreachable")
        self.calls.append((worker, job_id, attempt))

    def jobs(self) -> list[str]:
        return [job_id for _, job_id, _ in self.calls]


@pytest.fixture
def prefix() -> Iterator[str]:
    value = f"atelier-test-{uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({type(exc).__name__})")
    yield value
    keys = list(client.scan_iter(match=f"{value}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
async def aio() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def board(aio: aioredis.Redis, sent: Sent, prefix: str) -> JobBoard:
    return JobBoard(aio, sent, prefix=prefix)


@pytest.fixture
def wb(prefix: str) -> Iterator[WorkerBoard]:
    client = redis.Redis.from_url(REDIS_URL)
    yield WorkerBoard(client, prefix=prefix)
    client.close()


def info(name: str, kinds: tuple[str, ...] = ("image",), models: tuple[str, ...] = (),
         free_mb: int | None = 8000) -> WorkerInfo:  # fmt: skip
    return WorkerInfo(name=name, kinds=kinds, device="cpu", memory_free_mb=free_mb,
                      loaded_models=models, pid=os.getpid(), started_at=1.0)  # fmt: skip


async def enqueue(board: JobBoard, owner: str, n: int = 1, kind: str = "image",
                  model: str = "m") -> list[str]:  # fmt: skip
    return [
        await board.enqueue(owner=owner, kind=kind, model=model, payload=f"{owner}{i}".encode())
        for i in range(n)
    ]


def run_to_end(wb: WorkerBoard, worker: str, job_id: str, attempt: int) -> bytes:
    payload = wb.start(job_id, worker, attempt)
    assert payload is not None
    assert wb.finish(job_id, worker, attempt, b"done:" + payload)
    return payload


async def collect(events: AsyncIterator[dict], into: list[dict]) -> None:
    async for event in events:
        into.append(event)


async def until(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    """Poll an async condition (no timing asserted: the timeout only ends a hung test)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------- the rules


def test_routing_rule_prefers_the_model_then_free_memory() -> None:
    holder = info("holder", models=("sd15",), free_mb=1000)
    roomy = info("roomy", free_mb=9000)
    video = info("video", kinds=("video",), models=("sd15",), free_mb=20000)
    assert pick_worker([roomy, holder, video], "image", "sd15") == holder
    assert pick_worker([roomy, holder, video], "image", "flux") == roomy
    assert pick_worker([video], "image", "sd15") is None


def test_positions_follow_the_ring() -> None:
    ahead = queue_positions(["a", "b", "c"], {"a": ["a1", "a2", "a3"], "b": ["b1"], "c": ["c1"]})
    assert ahead == {"a1": 0, "b1": 1, "c1": 2, "a2": 3, "a3": 4}


# ---------------------------------------------------------------------- against Redis


async def test_a_light_user_waits_for_at_most_one_job_of_a_heavy_user(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    heavy = await enqueue(board, "alice", 16)
    (light,) = await enqueue(board, "bob")
    while len(sent.calls) < 17:
        wb.heartbeat(info("w1"))
        assert await board.dispatch() == 1
        worker, job_id, attempt = sent.calls[-1]
        run_to_end(wb, worker, job_id, attempt)
    order = sent.jobs()
    assert order.index(light) <= 1
    assert [j for j in order if j != light] == heavy  # each owner's jobs stay in order
    assert (await board.snapshot()).counters["succeeded"] == 17


async def test_owners_take_turns(board: JobBoard, wb: WorkerBoard, sent: Sent) -> None:
    a = await enqueue(board, "alice", 3)
    b = await enqueue(board, "bob", 3)
    for name in ("w1", "w2", "w3", "w4"):
        wb.heartbeat(info(name))
    assert await board.dispatch() == 4
    # bob arrived with nothing queued, so he went to the front of the ring
    assert sent.jobs() == [b[0], a[0], b[1], a[1]]


async def test_a_job_goes_to_the_worker_that_holds_its_model(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    wb.heartbeat(info("roomy", free_mb=60000))
    wb.heartbeat(info("holder", models=("sd15",), free_mb=2000))
    (job,) = await enqueue(board, "alice", model="sd15")
    assert await board.dispatch() == 1
    assert sent.calls == [("holder", job, 1)]
    status = await board.status(job)
    assert status is not None and (status.state, status.worker) == ("dispatched", "holder")
    (other,) = await enqueue(board, "bob", model="flux")
    await board.dispatch()
    assert sent.calls[-1] == ("roomy", other, 1)


async def test_only_capable_workers_get_a_job_and_the_owner_keeps_its_turn(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    (training,) = await enqueue(board, "alice", kind="training")
    (image1, image2) = await enqueue(board, "bob", 2)
    wb.heartbeat(info("painter", kinds=("image",)))
    assert await board.dispatch() == 1
    assert sent.calls == [("painter", image1, 1)]
    status = await board.status(training)
    assert status is not None and (status.state, status.ahead) == ("queued", 0)
    wb.heartbeat(info("trainer", kinds=("training",)))
    assert await board.dispatch() == 1
    assert sent.calls[-1] == ("trainer", training, 1)
    assert (await board.status(image2)).state == "queued"  # type: ignore[union-attr]


async def test_cancelling_a_queued_job_removes_it_at_once(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    (job,) = await enqueue(board, "alice")
    events: list[dict] = []
    follower = asyncio.create_task(collect(board.events(job), events))
    await asyncio.sleep(0.1)  # let it subscribe
    assert await board.cancel(job) == "cancelled"
    await asyncio.wait_for(follower, 10)
    assert events[-1] == {"type": "state", "state": "cancelled"}
    wb.heartbeat(info("w1"))
    assert await board.dispatch() == 0
    assert sent.calls == []
    assert (await board.result(job))[0] == "cancelled"
    assert await board.cancel(job) == "cancelled"  # a second cancel only reports
    snapshot = await board.snapshot()
    assert snapshot.queued_by_owner == {} and snapshot.counters["cancelled"] == 1


async def test_cancelling_a_running_job_sets_the_flag_the_worker_reads(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    assert wb.start(job, "w1", 1) == b"alice0"
    assert not wb.cancelled(job)
    assert await board.cancel(job) == "cancelling"
    assert wb.cancelled(job)
    events: list[dict] = []
    follower = asyncio.create_task(collect(board.events(job), events))
    await asyncio.sleep(0.1)
    assert wb.fail(job, "w1", 1, message="Stopped.", cancelled=True)
    await asyncio.wait_for(follower, 10)
    assert events[-1] == {"type": "state", "state": "cancelled"}
    assert (await board.result(job))[0] == "cancelled"
    assert (await board.live_workers())[0].busy_job is None


async def test_a_job_cancelled_before_its_worker_starts_it_never_runs(
    board: JobBoard, wb: WorkerBoard
) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    assert await board.cancel(job) == "cancelling"
    assert wb.start(job, "w1", 1) is None
    assert (await board.result(job))[0] == "cancelled"
    assert (await board.live_workers())[0].busy_job is None


# ------------------------------------------------------------------ waiter leases


@pytest.fixture
def leasing(aio: aioredis.Redis, sent: Sent, prefix: str) -> JobBoard:
    """The board of an app process whose waiter leases last 0.3 s."""
    return JobBoard(aio, sent, prefix=prefix, lease_s=0.3)


async def awaited(board: JobBoard, owner: str, n: int = 1) -> list[str]:
    return [
        await board.enqueue(owner=owner, kind="image", model="m", payload=b"x", awaited=True)
        for _ in range(n)
    ]


async def test_a_lapsed_lease_stops_a_waiting_and_a_running_job(
    leasing: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    wb.heartbeat(info("w1"))
    running, waiting = await awaited(leasing, "alice", 2)
    await leasing.dispatch()
    assert sent.calls == [("w1", running, 1)]
    assert wb.start(running, "w1", 1) is not None
    (unawaited,) = await enqueue(leasing, "bob")  # no lease: nobody's lapse stops it
    events: list[dict] = []
    follower = asyncio.create_task(collect(leasing.events(waiting), events))

    async def stopped() -> bool:  # nobody renews: the leases lapse after 0.3 s
        await leasing.dispatch()
        return (await leasing.status(waiting)).state == "cancelled"  # type: ignore[union-attr]

    await until(stopped)
    await asyncio.wait_for(follower, 10)
    assert events[-1] == {"type": "state", "state": "cancelled"}
    assert (await leasing.result(waiting))[3] == WAITER_GONE
    # The running one is told to stop at its next step, as a Stop would tell it.
    assert wb.cancelled(running)
    assert wb.fail(running, "w1", 1, message="stopped", cancelled=True)
    assert (await leasing.result(running))[0::3] == ("cancelled", WAITER_GONE)
    assert await leasing.renew(running) is False  # its waiter, back too late, learns it
    # The worker is free for the job nobody leases, which was never stopped.
    await leasing.dispatch()
    assert sent.calls[-1] == ("w1", unawaited, 1)
    assert (await leasing.snapshot()).counters["cancelled"] == 2


async def test_a_renewed_lease_keeps_the_job(
    leasing: JobBoard, wb: WorkerBoard, sent: Sent, aio: aioredis.Redis
) -> None:
    wb.heartbeat(info("w1"))
    running, waiting = await awaited(leasing, "alice", 2)
    await leasing.dispatch()
    assert wb.start(running, "w1", 1) is not None
    loop = asyncio.get_running_loop()
    until_t = loop.time() + 5 * leasing.lease_s
    while loop.time() < until_t:  # five leases long, renewed as a waiter does
        assert await leasing.renew(running) and await leasing.renew(waiting)
        await leasing.dispatch()
        assert not wb.cancelled(running)
        await asyncio.sleep(leasing.lease_s / 4)
    assert (await leasing.status(waiting)).state == "queued"  # type: ignore[union-attr]

    # A lease that lapsed while its waiter stalled, renewed before any pass noticed:
    # the waiter takes it again and the job carries on.
    await aio.delete(leasing.keys.lease(waiting))
    assert await leasing.renew(waiting)
    await leasing.dispatch()
    assert (await leasing.status(waiting)).state == "queued"  # type: ignore[union-attr]
    # A job its own user stopped is not taken again by a renewal.
    assert await leasing.cancel(running) == "cancelling"
    await aio.delete(leasing.keys.lease(running))
    assert await leasing.renew(running) is False
    assert wb.fail(running, "w1", 1, message="Stopped.", cancelled=True)
    assert (await leasing.result(running))[0::3] == ("cancelled", "Stopped.")
    # The job's lease goes with its hash.
    await leasing.forget(running)
    assert not await aio.exists(leasing.keys.lease(running), leasing.keys.job(running))


async def test_stale_or_repeated_messages_change_nothing(board: JobBoard, wb: WorkerBoard) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    assert wb.start(job, "w1", 2) is None  # wrong attempt
    assert wb.start(job, "w2", 1) is None  # wrong worker
    assert wb.start(job, "w1", 1) == b"alice0"
    assert wb.start(job, "w1", 1) is None  # delivered twice
    assert not wb.finish(job, "w1", 2, b"stale")
    assert wb.finish(job, "w1", 1, b"first")
    assert not wb.finish(job, "w1", 1, b"second")
    assert not wb.fail(job, "w1", 1, message="late failure")
    state, result, error, message = await board.result(job)
    assert (state, result, error, message) == ("succeeded", b"first", None, None)
    counters = (await board.snapshot()).counters
    assert (counters["succeeded"], counters["failed"], counters["run_count"]) == (1, 0, 1)
    assert counters["wait_count"] == 1


@pytest.fixture
def mortal(prefix: str) -> Iterator[WorkerBoard]:
    """Heartbeats that lapse after 0.3 s: a worker that stops beating is soon dead."""
    client = redis.Redis.from_url(REDIS_URL)
    yield WorkerBoard(client, prefix=prefix, ttl_s=0.3)
    client.close()


async def test_a_dead_workers_job_is_retried_first_once_then_fails(
    board: JobBoard, mortal: WorkerBoard, sent: Sent
) -> None:
    (job,) = await enqueue(board, "alice")
    mortal.heartbeat(info("w1"))
    await board.dispatch()
    assert mortal.start(job, "w1", 1) is not None
    others = await enqueue(board, "bob", 2)
    events: list[dict] = []
    follower = asyncio.create_task(collect(board.events(job), events))

    async def retried() -> bool:
        await board.dispatch()
        status = await board.status(job)
        return status is not None and status.state == "queued"

    await until(retried)  # w1 stopped beating: its heartbeat lapses
    status = await board.status(job)
    assert status is not None and (status.attempt, status.ahead) == (2, 0)
    assert not mortal.finish(job, "w1", 1, b"too late")  # the old run cannot finish it

    mortal.heartbeat(info("w2"))
    await board.dispatch()
    assert sent.calls[-1] == ("w2", job, 2)  # before bob's jobs, which were there first
    assert mortal.start(job, "w2", 2) is not None

    async def failed() -> bool:
        await board.dispatch()
        return (await board.result(job))[0] == "failed"

    await until(failed)
    await asyncio.wait_for(follower, 10)
    assert {"type": "retry", "attempt": 2} in events
    assert events[-1] == {"type": "state", "state": "failed"}
    assert (await board.result(job))[3] == DEAD_TWICE
    assert [(await board.status(j)).state for j in others] == ["queued", "queued"]  # type: ignore[union-attr]
    counters = (await board.snapshot()).counters
    assert (counters["retried"], counters["failed"]) == (1, 1)


async def test_a_worker_restarted_under_the_same_name_loses_its_old_job(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    wb.start(job, "w1", 1)
    reborn = WorkerInfo(name="w1", kinds=("image",), device="cpu", pid=1, started_at=2.0)
    wb.heartbeat(reborn)
    await board.dispatch()  # the job goes back to the queue and to the free new process
    assert sent.calls[-1] == ("w1", job, 2)


async def test_an_orderly_leave_hands_the_job_on(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    wb.start(job, "w1", 1)
    wb.leave("w1")
    wb.heartbeat(info("w2"))
    await board.dispatch()
    assert sent.calls[-1] == ("w2", job, 2)
    assert [w.name for w in await board.live_workers()] == ["w2"]


async def test_a_job_whose_task_could_not_be_sent_stays_first(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    first, second = await enqueue(board, "alice", 2)
    wb.heartbeat(info("w1"))
    sent.fail_for.add("w1")
    assert await board.dispatch() == 0
    assert (await board.status(first)).ahead == 0  # type: ignore[union-attr]
    assert (await board.live_workers())[0].busy_job is None
    sent.fail_for.clear()
    assert await board.dispatch() == 1
    assert sent.calls == [("w1", first, 1)]


async def test_positions_are_stored_and_their_changes_published(
    board: JobBoard, wb: WorkerBoard
) -> None:
    a = await enqueue(board, "alice", 3)
    b = await enqueue(board, "bob", 2)
    await board.dispatch()  # no worker: nothing handed out, positions computed
    ahead = {j: (await board.status(j)).ahead for j in a + b}  # type: ignore[union-attr]
    # bob came with nothing queued, so he is first in the ring
    assert ahead == {b[0]: 0, a[0]: 1, b[1]: 2, a[1]: 3, a[2]: 4}
    events: list[dict] = []
    follower = asyncio.create_task(collect(board.events(a[1]), events))
    await asyncio.sleep(0.1)
    await board.cancel(b[0])
    await board.dispatch()
    assert (await board.status(a[1])).ahead == 2  # type: ignore[union-attr]
    await until(lambda: _has(events, {"type": "position", "ahead": 2}))
    wb.heartbeat(info("w1"))
    await board.dispatch()  # bob's last job runs now; alice's turn comes next
    assert (await board.status(a[1])).ahead == 1  # type: ignore[union-attr]
    await until(lambda: _has(events, {"type": "position", "ahead": 1}))
    await board.cancel(a[1])
    await asyncio.wait_for(follower, 10)


async def _has(events: list[dict], wanted: dict) -> bool:
    return wanted in events


async def test_events_of_a_finished_or_unknown_job_end_at_once(
    board: JobBoard, wb: WorkerBoard
) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    run_to_end(wb, "w1", job, 1)
    assert [e async for e in board.events(job)] == [{"type": "state", "state": "succeeded"}]
    assert (await board.result(job))[1] == b"done:alice0"
    await board.forget(job)
    assert await board.status(job) is None
    assert [e async for e in board.events(job)] == [{"type": "state", "state": "unknown"}]


async def test_worker_events_reach_the_follower(board: JobBoard, wb: WorkerBoard) -> None:
    (job,) = await enqueue(board, "alice")
    wb.heartbeat(info("w1"))
    await board.dispatch()
    events: list[dict] = []
    follower = asyncio.create_task(collect(board.events(job), events))
    await asyncio.sleep(0.1)
    wb.start(job, "w1", 1)
    wb.publish(job, {"type": "progress", "done": 1, "total": 4, "note": "step"})
    wb.finish(job, "w1", 1, b"ok")
    await asyncio.wait_for(follower, 10)
    assert events == [
        {"type": "state", "state": "running"},
        {"type": "progress", "done": 1, "total": 4, "note": "step"},
        {"type": "state", "state": "succeeded"},
    ]


async def test_snapshot_counts_queues_workers_and_outcomes(
    board: JobBoard, wb: WorkerBoard
) -> None:
    await enqueue(board, "alice", 2)
    await enqueue(board, "bob", 1, kind="video")
    wb.heartbeat(info("w1", kinds=("video",), free_mb=1234))
    await board.dispatch()
    snapshot = await board.snapshot()
    assert snapshot.queued_by_kind == {"image": 2}
    assert snapshot.queued_by_owner == {"alice": 2}
    assert snapshot.running == 1
    assert [(w.name, w.memory_free_mb, w.busy_job is not None) for w in snapshot.workers] == [
        ("w1", 1234, True)
    ]
    assert snapshot.counters["dispatched"] == 1


async def test_the_dispatcher_loop_wakes_for_enqueues_and_new_workers(
    board: JobBoard, wb: WorkerBoard, sent: Sent
) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(board.run_dispatcher(stop, tick_s=600))  # no tick in this test
    try:
        (first,) = await enqueue(board, "alice")  # a local enqueue wakes it: no worker yet
        await until(lambda: _ahead_is(board, first, 0))
        wb.heartbeat(info("w1"))  # a worker appears: its first beat wakes the loop
        await until(lambda: _has_call(sent, ("w1", first, 1)))
        (second,) = await enqueue(board, "bob")
        await until(lambda: _ahead_is(board, second, 0))
        run_to_end(wb, "w1", first, 1)  # the finish wakes it: w1 is free again
        await until(lambda: _has_call(sent, ("w1", second, 1)))
    finally:
        stop.set()
        await loop


async def test_the_dispatcher_loop_outlives_an_unreachable_redis(sent: Sent) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    board = JobBoard(client, sent, prefix="atelier-test-nowhere:")
    stop = asyncio.Event()
    loop = asyncio.create_task(board.run_dispatcher(stop, tick_s=0.1))
    await asyncio.sleep(0.5)
    assert not loop.done()  # it keeps trying instead of dying with the first error
    stop.set()
    await asyncio.wait_for(loop, 10)
    await client.aclose()


async def _ahead_is(board: JobBoard, job_id: str, ahead: int) -> bool:
    status = await board.status(job_id)
    return status is not None and status.ahead == ahead


async def _has_call(sent: Sent, call: tuple[str, str, int]) -> bool:
    return call in sent.calls


# ----------------------------------------------------------- two app processes at once


async def test_two_boards_dispatching_at_once_hand_each_job_out_once(
    prefix: str, wb: WorkerBoard
) -> None:
    clients = [aioredis.Redis.from_url(REDIS_URL) for _ in range(2)]
    sends = [Sent(), Sent()]
    boards = [JobBoard(c, s, prefix=prefix) for c, s in zip(clients, sends, strict=True)]
    jobs = []
    for i in range(30):
        jobs += await enqueue(boards[i % 2], f"user{i % 3}")
    for n in range(8):
        wb.heartbeat(info(f"w{n}"))
    # Bypass the lock too: the claim itself must hold when passes overlap.
    await asyncio.gather(*(b._pass() for b in boards), *(b.dispatch() for b in boards))
    handed = sends[0].jobs() + sends[1].jobs()
    assert len(handed) == len(set(handed)) == 8

    # Then both dispatcher loops run while the workers finish what they are sent.
    stop = asyncio.Event()
    loops = [asyncio.create_task(b.run_dispatcher(stop, tick_s=0.2)) for b in boards]
    done: set[tuple[str, str, int]] = set()

    async def all_finished() -> bool:
        for call in sends[0].calls + sends[1].calls:
            if call not in done:
                done.add(call)
                worker, job_id, attempt = call
                await asyncio.to_thread(run_to_end, wb, worker, job_id, attempt)
                await asyncio.to_thread(wb.heartbeat, info(worker))
        return len(done) == len(jobs)

    try:
        await until(all_finished, timeout=30)
    finally:
        stop.set()
        await asyncio.gather(*loops)
        for client in clients:
            await client.aclose()
    handed = sends[0].jobs() + sends[1].jobs()
    assert sorted(handed) == sorted(jobs)  # every job once, none twice
