"""One `atelier worker` process: runs the jobs the board hands it, one at a time.

The worker plans its own device (`devices.plan`: torch is imported here, never in the
app), keeps its own pipeline caches (a model stays loaded between jobs, which is what
routing prefers), and tells the board every second that it is alive, what it can run,
what it has loaded and how much device memory is free. Celery delivers `atelier.run_job
(job_id, attempt)` on the worker's own queue; per job the worker

1. claims it on the board (compare-and-set: a stale or duplicate message is dropped),
2. runs it with a `Progress` that publishes throttled events to the app awaiting it
   (at most 5 updates a second; previews as base64; training records all),
3. watches the job's cancel flag every 0.2 s and passes it to the job as `cancel()`,
4. stores the result, or the error, once (compare-and-set again).

Results (PNG bytes, an MP4, a training result naming files in the shared LoRA folder)
go back through Redis to the app process that awaits the job; that process records
them and settles the cost, so the worker needs no database and no media store.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from typing import Any

from core.errors import AtelierError
from core.logging_setup import get_logger
from pipelines.devices import DevicePlan
from pipelines.job_queue import JobCancelled
from pipelines.progress import Preview
from pipelines.remote import job_codec
from pipelines.remote.celery_app import TASK_NAME, make_celery, queue_name

log = get_logger(__name__)

HEARTBEAT_S = 1.0
CANCEL_POLL_S = 0.2
EVENT_INTERVAL_S = 0.2  # at most 5 progress events a second
ALL_KINDS = ("image", "video", "training", "embedding")


def default_name(device: str) -> str:
    """hostname-device, in characters a queue name takes."""
    raw = f"{socket.gethostname()}-{device}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


def run_worker(
    *,
    broker_url: str,
    redis_url: str,
    name: str,
    device: str,
    kinds: tuple[str, ...] = ALL_KINDS,
    prefix: str = "atelier:",
) -> int:
    """Serve jobs until stopped (SIGTERM/SIGINT); the Celery worker's exit code."""
    import redis

    from pipelines import devices
    from pipelines.remote.worker_board import WorkerBoard

    plan = devices.plan(device)
    # Loaded before the first heartbeat: a worker that says it is free starts a job at once.
    import diffusers.pipelines.stable_diffusion  # noqa: F401

    board = WorkerBoard(redis.Redis.from_url(redis_url), prefix=prefix)
    worker = _Worker(board, name, plan, tuple(kinds))
    beating = threading.Event()
    beat = threading.Thread(target=worker.beat_until, args=(beating,), daemon=True)
    beat.start()
    app = make_celery(broker_url, prefix=prefix)
    app.task(name=TASK_NAME, bind=False)(worker.run_job)
    log.info("worker_started", worker=name, device=plan.device, dtype=plan.dtype, kinds=kinds)
    try:
        celery_worker = app.Worker(
            hostname=f"{name}@atelier",
            queues=[queue_name(name)],
            pool="solo",
            concurrency=1,
            prefetch_multiplier=1,
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            loglevel="WARNING",
            quiet=True,
        )
        celery_worker.start()
        return int(celery_worker.exitcode or 0)
    finally:
        beating.set()
        beat.join(timeout=2)
        board.leave(name)
        log.info("worker_stopped", worker=name)


class _Worker:
    """The job-running half of a worker process: its caches, its board, one job at a time."""

    def __init__(self, board: Any, name: str, plan: DevicePlan, kinds: tuple[str, ...]) -> None:
        from pipelines.images.pipeline_cache import PipelineCache
        from pipelines.video.local_video import load_svd

        self.board = board
        self.name = name
        self.plan = plan
        self.kinds = kinds
        self.caches = {
            "image": PipelineCache(),
            "video": PipelineCache(max_models=1, loader=load_svd),
        }
        self.started_at = time.time()

    def beat_until(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.board.heartbeat(self.info())
            except Exception:  # Redis away for a moment: the next beat tries again
                log.warning("worker_heartbeat_failed", worker=self.name, exc_info=True)
            stop.wait(HEARTBEAT_S)

    def info(self) -> Any:
        from pipelines.remote.worker_info import WorkerInfo

        total, free = _memory_mb(self.plan.device)
        return WorkerInfo(
            name=self.name,
            kinds=self.kinds,
            device=self.plan.device,
            device_name=_device_name(self.plan.device),
            memory_total_mb=total,
            memory_free_mb=free,
            loaded_models=self.loaded_models(),
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self.started_at,
        )

    def loaded_models(self) -> tuple[str, ...]:
        models: list[str] = []
        for cache in self.caches.values():
            with cache._lock:  # PipelineCache has no public listing yet
                models.extend(model for model, _device, _dtype in cache._entries)
        # CLIP models (embedding jobs) stay loaded for the life of the process.
        from pipelines.scoring.clip_scoring import LOADS

        models.extend(model for model, _device in list(LOADS))
        return tuple(dict.fromkeys(models))

    def run_job(self, job_id: str, attempt: int) -> None:
        """The Celery task body. Never raises: the outcome is recorded on the board."""
        payload = self.board.start(job_id, self.name, attempt)
        if payload is None:
            log.info("stale_job_message_dropped", job_id=job_id, attempt=attempt)
            return
        try:
            fn, watched = job_codec.loads_job(
                payload, self.caches.__getitem__, self.plan, attempt=attempt
            )
        except Exception as exc:
            log.exception("job_unreadable", job_id=job_id)
            self.board.fail(
                job_id, self.name, attempt, message=f"The worker could not read the job: {exc}"
            )
            return
        progress = _publishing_progress(self.board, job_id, watched)
        stop_watching = threading.Event()
        watcher = threading.Thread(
            target=_watch_cancel, args=(self.board, job_id, progress, stop_watching), daemon=True
        )
        watcher.start()
        started = time.perf_counter()
        try:
            value = fn(progress)
        except JobCancelled as exc:
            self.board.fail(
                job_id, self.name, attempt, message=str(exc) or "stopped", cancelled=True
            )
        except Exception as exc:
            if progress.cancelled:
                self.board.fail(job_id, self.name, attempt, message="stopped", cancelled=True)
            else:
                log.warning("job_failed", job_id=job_id, error=type(exc).__name__)
                self.board.fail(
                    job_id,
                    self.name,
                    attempt,
                    message=_message(exc),
                    error=job_codec.dumps_error(exc),
                )
        else:
            progress.flush()
            blob = job_codec.dumps_result(value, self.plan, self.name)
            self.board.finish(job_id, self.name, attempt, blob)
            log.info("job_finished", job_id=job_id, seconds=round(time.perf_counter() - started, 3))
        finally:
            stop_watching.set()


def _message(exc: BaseException) -> str:
    if isinstance(exc, AtelierError):
        return exc.message
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _watch_cancel(board: Any, job_id: str, progress: Any, stop: threading.Event) -> None:
    while not stop.wait(CANCEL_POLL_S):
        try:
            if board.cancelled(job_id):
                progress.cancel()
                return
        except Exception:
            log.warning("cancel_poll_failed", job_id=job_id, exc_info=True)


def _publishing_progress(board: Any, job_id: str, watched: bool) -> Any:
    """A TrainingProgress (so training records pass too) that publishes to the board."""
    from pipelines.training.lora_training import TrainingProgress

    class PublishingProgress(TrainingProgress):
        def __init__(self) -> None:
            super().__init__(None)
            self._sent_at = 0.0
            self._sent_preview: Preview | None = None
            self._unsent: dict[str, Any] | None = None
            self._publish_lock = threading.Lock()

        @property
        def watched(self) -> bool:
            return watched

        def report(
            self, done: int, total: int, note: str = "", preview: Preview | None = None
        ) -> None:
            super().report(done, total, note, preview)
            self._send({"type": "progress", "done": done, "total": total, "note": note}, preview)

        def show(self, preview: Preview) -> None:
            super().show(preview)
            latest = self.latest
            figures = (latest.done, latest.total, latest.note) if latest else (0, 0, "")
            event = {"type": "progress", "done": figures[0], "total": figures[1]}
            self._send({**event, "note": figures[2]}, preview)

        def record(self, kind: str, step: int, value: Any) -> None:
            super().record(kind, step, value)
            shown = str(value) if hasattr(value, "__fspath__") else value
            board.publish(job_id, {"type": "record", "kind": kind, "step": step, "value": shown})

        def _send(self, event: dict[str, Any], preview: Preview | None) -> None:
            now = time.monotonic()
            with self._publish_lock:
                due = now - self._sent_at >= EVENT_INTERVAL_S or event["done"] == 0
                if not due:
                    self._unsent = event
                    return
                self._sent_at, self._unsent = now, None
                newest = preview or self._preview  # one skipped while throttled counts too
                fresh = newest is not None and newest is not self._sent_preview
                if fresh:
                    self._sent_preview = newest
            board.publish(job_id, event)
            if fresh and newest is not None:
                board.publish(job_id, _preview_event(newest))

        def flush(self) -> None:
            with self._publish_lock:
                event, self._unsent = self._unsent, None
            if event is not None:
                board.publish(job_id, event)

    return PublishingProgress()


def _preview_event(preview: Preview) -> dict[str, Any]:
    return {
        "type": "preview",
        "mime": preview.mime,
        "width": preview.width,
        "height": preview.height,
        "data": base64.b64encode(preview.data).decode("ascii"),
    }


def _memory_mb(device: str) -> tuple[int | None, int | None]:
    if not device.startswith("cuda"):
        return None, None
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return total // 2**20, free // 2**20


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return str(torch.cuda.get_device_name(torch.device(device)))
    return device
