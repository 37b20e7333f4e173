"""The Celery app both sides share: the task name, the worker queues, the settings.

Celery only carries a job to the worker the job board picked (`atelier.run_job(job_id,
attempt)` on that worker's own queue `atelier.worker.<name>`); fairness, routing,
progress, cancel and results go through the board in Redis, because Celery has none of
them. So the settings are the ones for long GPU jobs run one at a time:

- solo pool and prefetch 1: a worker holds the one job it runs, never a second;
- early acks: a message is acked when the worker takes it. If the worker dies, the board
  sees its heartbeat stop and hands the job out again (once); Redis redelivering an
  unacked message an hour later would only be a stale duplicate;
- JSON messages with two plain fields, no results backend (results go through the board);
- every Redis key kombu writes starts with the board's prefix (`global_keyprefix`), so
  several deployments, or tests, share one Redis without seeing each other's queues;
- no remote control, gossip, mingle or Celery heartbeats: nothing here uses them, and
  they would add a broadcast queue per worker.
"""

from __future__ import annotations

from typing import Any

TASK_NAME = "atelier.run_job"
QUEUE_PREFIX = "atelier.worker."


def queue_name(worker: str) -> str:
    """The queue only `worker` consumes."""
    return f"{QUEUE_PREFIX}{worker}"


def make_celery(broker_url: str, *, prefix: str = "atelier:") -> Any:
    """A Celery app for `broker_url` (imports celery, which the app needs only when remote)."""
    from celery import Celery

    app = Celery("atelier", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        task_default_queue=queue_name("unrouted"),
        broker_connection_retry_on_startup=True,
        broker_transport_options={"global_keyprefix": f"{prefix}celery:"},
    )
    return app
