"""`atelier doctor` on a scaled-out install: the broker, each live worker, the media store.

Split from doctor.py because these checks talk to other machines (Redis, workers through
their heartbeats, S3): each says in one line what an operator would otherwise look up
in three places. Nothing here prints a password (URLs go through `redact_urls`).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from chat_app.settings import Settings
from core.errors import AtelierError
from core.redact import redact_urls

if TYPE_CHECKING:
    from chat_app.doctor import Check
    from pipelines.remote.worker_info import WorkerInfo

BROKER_TIMEOUT_S = 3.0


async def scale_checks(settings: Settings) -> list[Check]:
    checks = await broker_checks(settings)
    checks.append(await asyncio.to_thread(media_check, settings))
    return checks


async def broker_checks(settings: Settings) -> list[Check]:
    """The broker line, then one line per live worker (or one saying there is none)."""
    from chat_app.doctor import Check

    url = settings.broker_url
    if not url:
        return [
            Check(
                "broker",
                True,
                "not configured: local jobs run in this process "
                "(set ATELIER_BROKER_URL to run them on `atelier worker` processes)",
            )
        ]
    shown = redact_urls(url)
    try:
        import redis.asyncio as aredis
        from redis.exceptions import RedisError
    except ImportError:
        return [
            Check("broker", False, "the workers extra is missing: pip install 'atelier[workers]'")
        ]
    from pipelines.remote.job_board import JobBoard

    # The board lives on ATELIER_REDIS_URL when set, else on the broker (job_runners.py).
    urls = dict.fromkeys([url, settings.redis_url or url])
    clients = [
        aredis.Redis.from_url(
            each, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S
        )
        for each in urls
    ]
    try:
        for each, client in zip(urls, clients, strict=True):
            shown = redact_urls(each)
            await client.ping()
        board = JobBoard(clients[-1], _never_sent, prefix=settings.broker_prefix)
        snapshot = await board.snapshot()
    except (RedisError, OSError) as exc:
        return [
            Check(
                "broker",
                False,
                f"{shown} unreachable ({type(exc).__name__}): "
                "no local image, video or training job can run until it answers",
            )
        ]
    finally:
        for client in clients:
            await client.aclose()
    queued = sum(snapshot.queued_by_owner.values())
    checks = [
        Check(
            "broker",
            True,
            f"{redact_urls(url)} reachable; {len(snapshot.workers)} live worker(s), "
            f"{queued} job(s) queued, {snapshot.running} running",
        )
    ]
    if not snapshot.workers:
        checks.append(
            Check(
                "workers",
                False,
                "none live: local image, video and training jobs wait until "
                "`atelier worker` runs somewhere",
            )
        )
    for worker in sorted(snapshot.workers, key=lambda w: w.name):
        checks.append(Check(f"worker {worker.name}", True, worker_line(worker)))
    return checks


async def _never_sent(worker: str, job_id: str, attempt: int) -> None:
    raise AssertionError("doctor only reads the board; it never dispatches")


def worker_line(worker: WorkerInfo) -> str:
    """`cuda:0 (NVIDIA H200), 120.3 of 139.8 GiB free, image+video, models: a, b, idle`."""
    device = f"{worker.device} ({worker.device_name})" if worker.device_name else worker.device
    parts = [device, _memory(worker.memory_free_mb, worker.memory_total_mb)]
    parts.append("+".join(worker.kinds) or "no kinds")
    loaded = ", ".join(worker.loaded_models) if worker.loaded_models else "none loaded"
    parts.append(f"models: {loaded}")
    parts.append(f"running job {worker.busy_job}" if worker.busy_job else "idle")
    if worker.host:
        parts.append(f"on {worker.host} (pid {worker.pid})")
    return ", ".join(parts)


def _memory(free_mb: int | None, total_mb: int | None) -> str:
    if free_mb is None:
        return "memory unknown"
    free = f"{free_mb / 1024:.1f}"
    return f"{free} of {total_mb / 1024:.1f} GiB free" if total_mb else f"{free} GiB free"


def media_check(settings: Settings) -> Check:
    """Write, read back and delete a probe file where the app keeps its media.

    The probe's bytes are unique, so its (content-addressed) key is nobody else's file.
    """
    from chat_app.doctor import Check
    from memory.media_stores import media_store_for

    where = _media_label(settings)
    probe = f"atelier doctor probe {uuid.uuid4()}".encode()
    try:
        store = media_store_for(settings)
        key = store.put(probe)
        try:
            if store.get(key) != probe:
                return Check("media", False, f"{where}: a file written reads back different")
        finally:
            store.delete(key)
    except AtelierError as exc:
        return Check("media", False, f"{where}: {exc.message}")
    except OSError as exc:
        return Check("media", False, f"{where} not writable: {exc.strerror or type(exc).__name__}")
    return Check("media", True, f"{where} writable and readable")


def _media_label(settings: Settings) -> str:
    if settings.media_s3_bucket:
        endpoint = redact_urls(settings.media_s3_endpoint_url or "AWS")
        return f"S3 bucket {settings.media_s3_bucket!r} at {endpoint}"
    return f"local disk {(settings.data_dir / 'media').resolve()}"
