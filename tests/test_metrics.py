"""GET /metrics: token rules, and figures that match what is really on the queue.

The remote figures come from a real `JobBoard` on the Redis server here (a unique key
prefix per test), with workers made live by real `WorkerBoard` heartbeats; the in-process
ones from a real `JobQueue` holding blocked jobs. The text is read back with
prometheus_client's own parser, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from chat_app.metrics_route import (
    QueueReading,
    create_router,
    read_board,
    read_lanes,
    read_queue,
    render,
)
from pipelines.job_queue import JobQueue
from pipelines.progress import Progress
from tests.app_process import AppProcess

REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TOKEN = "scrape-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def labelled(samples: dict, name: str, label: str) -> dict[str, float]:
    return {dict(k[1])[label]: v for k, v in samples.items() if k[0] == name}


def client_for(reader, token: str | None = TOKEN) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(create_router(SecretStr(token) if token is not None else None, reader))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def _nothing() -> QueueReading:
    return QueueReading("in-process")


# --- token ------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
async def test_without_a_token_there_is_no_metrics_page(token: str | None) -> None:
    async with client_for(_nothing, token) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/metrics", headers=AUTH)).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
async def test_a_missing_or_wrong_token_is_refused(headers: dict[str, str]) -> None:
    async with client_for(_nothing) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert TOKEN not in response.text


async def test_the_right_token_gets_prometheus_text() -> None:
    async with client_for(_nothing) as client:
        response = await client.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = parse(response.text)
    assert value(samples, "atelier_job_runner", mode="in-process") == 1
    assert value(samples, "process_start_time_seconds") <= time.time()


# --- in process -------------------------------------------------------------------------


async def test_in_process_depth_per_device_and_no_workers() -> None:
    queue = JobQueue()
    release = threading.Event()

    def blocked(progress: Progress) -> str:
        release.wait(30)
        return "done"

    jobs = [asyncio.create_task(queue.run("cpu", blocked, Progress())) for _ in range(3)]
    jobs.append(asyncio.create_task(queue.run("cuda:1", blocked, Progress())))
    while queue.waiting("cpu") < 3 or queue.waiting("cuda:1") < 1:  # noqa: ASYNC110 - no event
        await asyncio.sleep(0.01)

    async def reader() -> QueueReading:
        return read_lanes(queue)

    try:
        async with client_for(reader) as client:
            busy = parse((await client.get("/metrics", headers=AUTH)).text)
            release.set()
            assert await asyncio.gather(*jobs) == ["done"] * 4
            idle = parse((await client.get("/metrics", headers=AUTH)).text)
    finally:
        release.set()
        queue.shutdown()
    assert labelled(busy, "atelier_queue_depth_by_device", "device") == {"cpu": 2, "cuda:1": 0}
    assert value(busy, "atelier_jobs_running") == 2
    assert value(busy, "atelier_workers") == 0
    assert labelled(idle, "atelier_queue_depth_by_device", "device") == {"cpu": 0, "cuda:1": 0}
    assert value(idle, "atelier_jobs_running") == 0


async def test_the_app_reads_the_local_backends_queue(tmp_path) -> None:
    """`read_queue` finds the JobQueue the local backend really runs its jobs on."""
    from types import SimpleNamespace

    from chat_app.model_status import load_catalogue
    from chat_app.settings import Settings
    from pipelines.images.registry import BackendRegistry

    settings = Settings(_env_file=None, data_dir=tmp_path)
    backends = BackendRegistry.from_settings(settings, load_catalogue(settings))
    runtime = SimpleNamespace(settings=settings, services=SimpleNamespace(backends=backends))
    queue = backends.get("local").runner
    release = threading.Event()
    jobs = [
        asyncio.create_task(queue.run("cpu", lambda _: release.wait(30), Progress()))
        for _ in range(2)
    ]
    while queue.waiting("cpu") < 2:  # noqa: ASYNC110 - the queue has no event to wait on
        await asyncio.sleep(0.01)
    try:
        reading = await read_queue(runtime)
    finally:
        release.set()
        await asyncio.gather(*jobs)
        queue.shutdown()
    samples = parse(render(reading).decode())
    assert value(samples, "atelier_job_runner", mode="in-process") == 1
    assert labelled(samples, "atelier_queue_depth_by_device", "device") == {"cpu": 1}
    assert value(samples, "atelier_jobs_running") == 1


# --- remote: a real JobBoard on Redis ----------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"atelier-test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def redis_pair(prefix: str) -> AsyncIterator[tuple]:
    """(async client for the board, sync client for the workers); keys removed after."""
    import redis
    import redis.asyncio as aredis

    sync = redis.Redis.from_url(REDIS_URL)
    try:
        sync.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL}: {exc}")
    client = aredis.Redis.from_url(REDIS_URL)
    try:
        yield client, sync
    finally:
        for key in sync.scan_iter(match=f"{prefix}*"):
            sync.delete(key)
        sync.close()
        await client.aclose()


def worker_info(name: str, kinds: tuple[str, ...], **more):
    from pipelines.remote.worker_info import WorkerInfo

    return WorkerInfo(name=name, kinds=kinds, device="cuda:0", started_at=time.time(), **more)


async def test_board_figures_match_the_queue_and_workers(redis_pair, prefix: str) -> None:
    from pipelines.remote.job_board import JobBoard
    from pipelines.remote.worker_board import WorkerBoard

    client, sync = redis_pair
    sent: list[tuple[str, str, int]] = []

    async def send(worker: str, job_id: str, attempt: int) -> None:
        sent.append((worker, job_id, attempt))

    board = JobBoard(client, send, prefix=prefix)
    workers = WorkerBoard(sync, prefix=prefix, ttl_s=60)
    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())
    for _ in range(3):
        await board.enqueue(owner=user_a, kind="image", model="m-a", payload=b"x")
    await board.enqueue(owner=user_b, kind="video", model="m-v", payload=b"x")
    await board.enqueue(owner=user_b, kind="image", model="m-a", payload=b"x")
    workers.heartbeat(
        worker_info("w-image", ("image",), memory_free_mb=1000, loaded_models=("m-a",))
    )
    workers.heartbeat(worker_info("w-train", ("training",), memory_free_mb=None))
    assert await board.dispatch() == 1  # only w-image can take a job: user_a's first

    async def reader() -> QueueReading:
        return await read_board(board)

    async with client_for(reader) as client:
        before = parse((await client.get("/metrics", headers=AUTH)).text)
        (worker, job_id, attempt) = sent[0]
        assert workers.start(job_id, worker, attempt) == b"x"
        assert workers.finish(job_id, worker, attempt, b"result")
        after = parse((await client.get("/metrics", headers=AUTH)).text)

    assert value(before, "atelier_job_runner", mode="remote") == 1
    assert value(before, "atelier_broker_up") == 1
    assert labelled(before, "atelier_queue_depth_by_user", "user") == {user_a: 2, user_b: 2}
    assert labelled(before, "atelier_queue_depth", "kind") == {"image": 3, "video": 1}
    assert value(before, "atelier_jobs_running") == 1
    assert value(before, "atelier_workers") == 2
    assert labelled(before, "atelier_worker_gpu_memory_free_bytes", "worker") == {
        "w-image": 1000 * MIB
    }
    assert value(before, "atelier_worker_busy", worker="w-image", device="cuda:0") == 1
    assert value(before, "atelier_worker_busy", worker="w-train", device="cuda:0") == 0
    assert value(before, "atelier_jobs_dispatched_total") == 1
    assert value(before, "atelier_jobs_total", outcome="succeeded") == 0

    assert value(after, "atelier_jobs_running") == 0
    assert value(after, "atelier_jobs_total", outcome="succeeded") == 1
    assert value(after, "atelier_jobs_total", outcome="failed") == 0
    assert value(after, "atelier_job_run_seconds_count") == 1
    assert value(after, "atelier_job_wait_seconds_count") == 1
    assert value(after, "atelier_job_retries_total") == 0


async def test_an_unreachable_broker_is_reported_not_an_error() -> None:
    import redis.asyncio as aredis

    from pipelines.remote.job_board import JobBoard
    from tests.app_process import free_port

    async def send(worker: str, job_id: str, attempt: int) -> None:
        raise AssertionError("nothing is dispatched")

    client = aredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    board = JobBoard(client, send, prefix="atelier-test-down:")

    async def reader() -> QueueReading:
        return await read_board(board)

    try:
        async with client_for(reader) as http:
            response = await http.get("/metrics", headers=AUTH)
    finally:
        await client.aclose()
    assert response.status_code == 200
    samples = parse(response.text)
    assert value(samples, "atelier_broker_up") == 0
    assert not labelled(samples, "atelier_queue_depth_by_user", "user")


# --- the running app ---------------------------------------------------------------------


@pytest.fixture
def app_process(tmp_path) -> Iterator:
    apps: list[AppProcess] = []

    def start(**env: str) -> AppProcess:
        app = AppProcess(tmp_path / f"data{len(apps)}", env).start()
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.stop()


@pytest.mark.slow
def test_the_running_app_answers_in_process(app_process) -> None:
    app = app_process(ATELIER_METRICS_TOKEN=TOKEN)
    url = app.base_url + "/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    response = httpx.get(url, headers=AUTH)
    assert response.status_code == 200, response.text
    samples = parse(response.text)
    assert value(samples, "atelier_job_runner", mode="in-process") == 1
    assert value(samples, "atelier_workers") == 0
    assert value(samples, "atelier_jobs_running") == 0
    assert value(samples, "process_start_time_seconds") <= time.time()
    assert "Traceback" not in app.log()


@pytest.fixture
def sync_redis(prefix: str) -> Iterator:
    """A sync client; the prefix's keys are removed after the app (set up later) stops."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL}: {exc}")
    yield client
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.mark.slow
def test_the_running_app_reads_the_shared_board(sync_redis, app_process, prefix: str) -> None:
    """The app process's /metrics shows what another process put on the board."""
    import redis.asyncio as aredis

    from pipelines.remote.job_board import JobBoard
    from pipelines.remote.worker_board import WorkerBoard

    user_a, user_b = str(uuid.uuid4()), str(uuid.uuid4())

    async def enqueue() -> None:
        async def send(worker: str, job_id: str, attempt: int) -> None:
            raise AssertionError("no worker here can take these jobs")

        client = aredis.Redis.from_url(REDIS_URL)
        board = JobBoard(client, send, prefix=prefix)
        for owner, kind in ((user_a, "image"), (user_a, "video"), (user_b, "image")):
            await board.enqueue(owner=owner, kind=kind, model="m", payload=b"x")
        await client.aclose()

    asyncio.run(enqueue())
    # A live worker that takes only trainings: the app's dispatcher hands it nothing.
    WorkerBoard(sync_redis, prefix=prefix, ttl_s=120).heartbeat(
        worker_info("w-train", ("training",), memory_free_mb=2048)
    )
    app = app_process(
        ATELIER_METRICS_TOKEN=TOKEN, ATELIER_BROKER_URL=REDIS_URL, ATELIER_BROKER_PREFIX=prefix
    )
    url = app.base_url + "/metrics"
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    response = httpx.get(url, headers=AUTH)
    assert response.status_code == 200, response.text
    samples = parse(response.text)
    assert value(samples, "atelier_job_runner", mode="remote") == 1
    assert value(samples, "atelier_broker_up") == 1
    assert labelled(samples, "atelier_queue_depth_by_user", "user") == {user_a: 2, user_b: 1}
    assert labelled(samples, "atelier_queue_depth", "kind") == {"image": 2, "video": 1}
    assert value(samples, "atelier_jobs_running") == 0
    assert value(samples, "atelier_workers") == 1
    assert labelled(samples, "atelier_worker_gpu_memory_free_bytes", "worker") == {
        "w-train": 2048 * MIB
    }
    assert "Traceback" not in app.log()
