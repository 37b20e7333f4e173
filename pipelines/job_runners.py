"""Which `JobRunner` the local backends get: in this process, or on worker processes.

With ATELIER_BROKER_URL unset (the default) each local backend gets an in-process
`JobQueue`, exactly as before workers existed; video and training reuse the image
backend's, so one device runs one job at a time. With a broker URL, every local backend
of this process shares one `CeleryJobRunner` on one `JobBoard`, and this process runs a
dispatcher loop (`start`/`stop`, called by the runtime) that hands queued jobs to free
workers; every app replica runs one, and the board's lock serialises them.

The board's Redis is ATELIER_REDIS_URL when set, else the broker's (Celery on Redis).
Keys start with ATELIER_BROKER_PREFIX ("atelier:"), so deployments, and tests, that
share a Redis stay apart.

The remote runner is made once per process, on first use, and only then are celery and
the board imported: an app without a broker never imports either.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from core.logging_setup import get_logger
from pipelines.job_queue import JobQueue, JobRunner

log = get_logger(__name__)

_remote: Any = None  # the process's CeleryJobRunner, once made
_dispatcher: asyncio.Task[None] | None = None
_stop: asyncio.Event | None = None


def broker_url_of(settings: Any) -> str | None:
    return getattr(settings, "broker_url", None) or None


def runner_for(settings: Any) -> JobRunner:
    """A new in-process JobQueue, or this process's CeleryJobRunner when a broker is set."""
    if not broker_url_of(settings):
        return JobQueue()
    global _remote
    if _remote is None:
        _remote = build_remote(settings)
    return _remote


def build_remote(settings: Any) -> Any:
    """A CeleryJobRunner on its own JobBoard for `settings` (broker_url, broker_prefix,
    redis_url). The process-wide one is `runner_for`'s; tests and benchmarks make their
    own and close it (`await runner.aclose()`)."""
    import redis.asyncio

    from pipelines.remote.celery_app import TASK_NAME, make_celery, queue_name
    from pipelines.remote.celery_runner import CeleryJobRunner
    from pipelines.remote.job_board import JobBoard

    broker_url = broker_url_of(settings)
    if not broker_url:
        raise ValueError("build_remote needs settings with a broker_url")
    prefix = getattr(settings, "broker_prefix", None) or "atelier:"
    redis_url = getattr(settings, "redis_url", None) or broker_url
    celery = make_celery(broker_url, prefix=prefix)

    async def send(worker: str, job_id: str, attempt: int) -> None:
        # kombu publishes blocking; a thread keeps the event loop free meanwhile.
        await asyncio.to_thread(
            celery.send_task, TASK_NAME, args=[job_id, attempt], queue=queue_name(worker)
        )

    client = redis.asyncio.Redis.from_url(redis_url)

    async def close() -> None:
        await client.aclose()
        await asyncio.to_thread(celery.close)

    return CeleryJobRunner(JobBoard(client, send, prefix=prefix), close=close)


def plans_on_worker(runner: Any) -> bool:
    """The runner's worker plans the device: the app must not import torch to plan one."""
    return bool(getattr(runner, "plans_on_worker", False))


def planned_here(device: str) -> Any:
    """The stand-in plan an app records before a worker chose the real one."""
    from pipelines.devices import DevicePlan

    return DevicePlan(device=device or "auto", dtype="auto")


def plan_used(runner: Any, planned: Any) -> Any:
    """The plan the job ran with: the worker's when it ran on one, else `planned`."""
    if not plans_on_worker(runner):
        return planned
    from pipelines.remote.celery_runner import last_run

    run = last_run()
    return run.plan if run is not None else planned


def remote_board() -> Any:
    """The app's JobBoard when jobs run on workers (for /metrics and doctor), else None."""
    return _remote.board if _remote is not None else None


async def start(settings: Any = None) -> None:
    """Start this process's dispatcher loop when jobs run on workers; else nothing."""
    global _dispatcher, _stop
    if settings is not None and broker_url_of(settings):
        runner_for(settings)
    board = remote_board()
    if board is None or _dispatcher is not None:
        return
    _stop = asyncio.Event()
    _dispatcher = asyncio.create_task(board.run_dispatcher(_stop), name="job-dispatcher")
    log.info("job_dispatcher_started")


async def stop() -> None:
    """Stop the dispatcher loop (jobs stay on the board for the other replicas)."""
    global _dispatcher, _stop
    if _dispatcher is None or _stop is None:
        return
    _stop.set()
    try:
        await asyncio.wait_for(_dispatcher, 5)
    except TimeoutError:
        _dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _dispatcher
    _dispatcher = _stop = None


async def reset() -> None:
    """Forget the remote runner (tests that build several with other settings)."""
    global _remote
    await stop()
    if _remote is not None:
        with contextlib.suppress(Exception):
            await _remote.aclose()
    _remote = None
