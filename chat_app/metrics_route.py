"""GET /metrics: the job queue and the workers in Prometheus text, for the operator.

Off unless ATELIER_METRICS_TOKEN is set (then 404, as if there were no such page); a
scraper sends `Authorization: Bearer <token>`, compared in constant time, anything else
is 401. The figures name users by id, never by name.

Each scrape reads the queue once and builds a fresh registry around that reading:
`JobBoard.snapshot()` is async while a prometheus_client `Collector.collect` is not, so
the collector only turns a reading already taken into metric families.

- Remote (ATELIER_BROKER_URL set): the board's snapshot. If Redis does not answer, the
  scrape still succeeds with `atelier_broker_up 0`, so an alert can fire on it.
- In process: the shared `JobQueue`'s lanes; one job runs per device, the rest wait.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from pydantic import SecretStr

from chat_app.runtime import Runtime, get_runtime
from chat_app.settings import Settings
from core.logging_setup import get_logger

if TYPE_CHECKING:
    from pipelines.job_queue import JobQueue
    from pipelines.remote.job_board import BoardSnapshot, JobBoard

log = get_logger(__name__)

MIB = 1024 * 1024
OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class QueueReading:
    """One look at the job queue, taken before the registry is collected."""

    mode: str  # "remote" | "in-process"
    snapshot: BoardSnapshot | None = None  # remote, when the broker answered
    broker_up: bool = True
    lanes: dict[str, int] = field(default_factory=dict)  # in process: device → jobs in it


async def read_board(board: JobBoard) -> QueueReading:
    from redis.exceptions import RedisError

    try:
        return QueueReading("remote", snapshot=await board.snapshot())
    except (RedisError, OSError) as exc:
        log.warning("metrics_broker_unreachable", error=type(exc).__name__)
        return QueueReading("remote", broker_up=False)


def read_lanes(queue: JobQueue) -> QueueReading:
    # JobQueue has no public list of its devices; its lanes dict is read, not changed.
    devices = sorted(queue._lanes)  # noqa: SLF001
    return QueueReading("in-process", lanes={d: queue.waiting(d) for d in devices})


class QueueCollector(Collector):
    def __init__(self, reading: QueueReading) -> None:
        self.reading = reading

    def collect(self) -> Iterator[Metric]:
        reading = self.reading
        mode = GaugeMetricFamily(
            "atelier_job_runner",
            "Where local GPU jobs run (1 for the mode in use).",
            labels=["mode"],
        )
        mode.add_metric([reading.mode], 1)
        yield mode
        if reading.mode == "in-process":
            yield from _lane_metrics(reading.lanes)
            return
        yield GaugeMetricFamily(
            "atelier_broker_up",
            "1 if the job board's Redis answered this scrape.",
            value=1 if reading.broker_up else 0,
        )
        if reading.snapshot is not None:
            yield from _board_metrics(reading.snapshot)


def _lane_metrics(lanes: dict[str, int]) -> Iterator[Metric]:
    """In process: each device runs its first job and queues the rest; no workers."""
    depth = GaugeMetricFamily(
        "atelier_queue_depth_by_device", "Jobs waiting for a device.", labels=["device"]
    )
    for device, jobs in lanes.items():
        depth.add_metric([device], max(jobs - 1, 0))
    yield depth
    running = sum(1 for jobs in lanes.values() if jobs > 0)
    yield GaugeMetricFamily("atelier_jobs_running", "Jobs running now.", value=running)
    yield GaugeMetricFamily("atelier_workers", "Live worker processes.", value=0)


def _board_metrics(snap: BoardSnapshot) -> Iterator[Metric]:
    by_kind = GaugeMetricFamily("atelier_queue_depth", "Jobs queued, by kind.", labels=["kind"])
    for kind, count in sorted(snap.queued_by_kind.items()):
        by_kind.add_metric([kind], count)
    yield by_kind
    by_user = GaugeMetricFamily(
        "atelier_queue_depth_by_user", "Jobs queued, by user id.", labels=["user"]
    )
    for owner, count in sorted(snap.queued_by_owner.items()):
        by_user.add_metric([owner], count)
    yield by_user
    yield GaugeMetricFamily(
        "atelier_jobs_running", "Jobs handed to a worker or running.", value=snap.running
    )
    yield from _worker_metrics(snap)
    yield from _counter_metrics(snap.counters)


def _worker_metrics(snap: BoardSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily("atelier_workers", "Live worker processes.", value=len(snap.workers))
    busy = GaugeMetricFamily(
        "atelier_worker_busy", "1 while a worker has a job.", labels=["worker", "device"]
    )
    memory = GaugeMetricFamily(
        "atelier_worker_gpu_memory_free_bytes",
        "Free memory on each worker's device, as its last heartbeat said.",
        labels=["worker"],
    )
    for worker in sorted(snap.workers, key=lambda w: w.name):
        busy.add_metric([worker.name, worker.device], 1 if worker.busy_job else 0)
        if worker.memory_free_mb is not None:
            memory.add_metric([worker.name], worker.memory_free_mb * MIB)
    yield busy
    yield memory


def _counter_metrics(counters: dict[str, float]) -> Iterator[Metric]:
    jobs = CounterMetricFamily(
        "atelier_jobs", "Jobs finished since the board was created, by outcome.", labels=["outcome"]
    )
    for outcome in OUTCOMES:
        jobs.add_metric([outcome], counters.get(outcome, 0))
    yield jobs
    yield CounterMetricFamily(
        "atelier_jobs_dispatched", "Jobs handed to a worker.", value=counters.get("dispatched", 0)
    )
    yield CounterMetricFamily(
        "atelier_job_retries",
        "Jobs sent again because their worker stopped.",
        value=counters.get("retried", 0),
    )
    for name, what in (("wait", "queued before a worker started them"), ("run", "running")):
        yield SummaryMetricFamily(
            f"atelier_job_{name}_seconds",
            f"Seconds jobs spent {what}.",
            count_value=counters.get(f"{name}_count", 0),
            sum_value=counters.get(f"{name}_seconds_sum", 0),
        )


async def read_queue(runtime: Runtime) -> QueueReading:
    """This process's reading: the remote board if jobs go to workers, else the lanes of
    the local backend's JobQueue (video and training share it; none without that backend).
    """
    from pipelines import job_runners
    from pipelines.job_queue import JobQueue

    board = job_runners.remote_board()
    if board is not None:
        return await read_board(board)
    if job_runners.broker_url_of(runtime.settings):
        return QueueReading("remote", broker_up=False)  # the dispatcher has not started yet
    local = {backend.id: backend for backend in runtime.services.backends.available()}
    runner = getattr(local.get("local"), "runner", None)
    if isinstance(runner, JobQueue):
        return read_lanes(runner)
    return QueueReading("in-process")


def render(reading: QueueReading) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(reading))
    registry.register(ProcessCollector(registry=None))  # start time, CPU, memory
    return generate_latest(registry)


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def create_router(
    token: SecretStr | None, reader: Callable[[], Awaitable[QueueReading]]
) -> APIRouter:
    """The /metrics route; `reader` takes the queue's reading (tests give their own)."""
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        secret = token.get_secret_value() if token is not None else ""
        if not secret:
            raise HTTPException(status_code=404, detail="Not found")
        if not _authorized(request.headers.get("authorization"), secret):
            raise HTTPException(
                status_code=401,
                detail="Send the metrics token as Authorization: Bearer <token>.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(render(await reader()), media_type=CONTENT_TYPE_LATEST)

    return router


def router_for(settings: Settings) -> APIRouter:
    """The app's /metrics, reading this process's job runner at each scrape."""
    return create_router(settings.metrics_token, lambda: read_queue(get_runtime()))
