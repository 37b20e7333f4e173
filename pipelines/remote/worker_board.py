"""The worker's side of the job board: heartbeats, and compare-and-set job reports.

A worker process (sync code, Celery's solo pool plus a heartbeat thread) never decides
which job it runs: the app's dispatcher claims a job for it and sends a Celery task
naming (job id, attempt). The worker then moves the job with scripts that check that
claim, so a message for an old attempt (the job was retried elsewhere after this
worker was thought dead) or a second delivery of the same message changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from core.logging_setup import get_logger
from pipelines.remote.board_keys import ACTIVE_STATES, DEFAULT_PREFIX, BoardKeys
from pipelines.remote.board_scripts import register
from pipelines.remote.worker_info import WorkerInfo

log = get_logger(__name__)


class WorkerBoard:
    """Reports of one worker process (any number of threads may share one)."""

    def __init__(
        self, redis_client: redis.Redis, *, prefix: str = DEFAULT_PREFIX, ttl_s: float = 5.0
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
        self.redis = redis_client
        self.prefix = prefix
        self.keys = BoardKeys(prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.scripts = register(redis_client)

    def heartbeat(self, info: WorkerInfo) -> None:
        """Say "alive" for ttl_s; wakes the dispatchers when this worker appears free."""
        self.scripts.heartbeat(args=[self.prefix, info.name, info.to_json(), self.ttl_ms])

    def start(self, job_id: str, worker: str, attempt: int) -> bytes | None:
        """Take the job dispatched to `worker` for `attempt`; its payload, or None if stale.

        None also when the user cancelled it before it started (it is settled as
        cancelled here, so nobody waits on it).
        """
        payload = self.scripts.start(args=[self.prefix, job_id, worker, attempt])
        if payload is None:
            log.info("job_start_refused", job_id=job_id, worker=worker, attempt=attempt)
        return payload

    def cancelled(self, job_id: str) -> bool:
        """Should the running job stop? (cancel asked, or the job is no longer running here)."""
        state, flag = self.redis.hmget(self.keys.job(job_id), ["state", "cancel"])
        if flag == b"1":
            return True
        return state is None or state.decode() not in ACTIVE_STATES

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        """Send a progress/preview/record event to whichever app process awaits the job."""
        self.redis.publish(self.keys.events(job_id), json.dumps(event, default=str))

    def finish(self, job_id: str, worker: str, attempt: int, result: bytes) -> bool:
        """Store the result if this run still holds the job; False if it was stale."""
        done = self.scripts.finish(args=[self.prefix, job_id, worker, attempt, result])
        if not done:
            log.info("job_finish_refused", job_id=job_id, worker=worker, attempt=attempt)
        return bool(done)

    def fail(
        self,
        job_id: str,
        worker: str,
        attempt: int,
        *,
        message: str,
        error: bytes | None = None,
        cancelled: bool = False,
    ) -> bool:
        """End the job as failed (or cancelled) if this run still holds it."""
        args = [
            self.prefix,
            job_id,
            worker,
            attempt,
            message,
            error or b"",
            "1" if cancelled else "0",
        ]
        done = self.scripts.fail(args=args)
        if not done:
            log.info("job_fail_refused", job_id=job_id, worker=worker, attempt=attempt)
        return bool(done)

    def leave(self, name: str) -> None:
        """Orderly shutdown: drop the heartbeat now, so no job is dispatched here again.

        A job still held by this worker is then found by the next dispatch pass and
        retried elsewhere, without waiting for the heartbeat to lapse.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.worker(name))
            pipe.srem(self.keys.workers, name)
            pipe.publish(self.keys.kick, "left")
            pipe.execute()
