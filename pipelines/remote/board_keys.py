"""The Redis key names of the job board, in one place.

The app side (`JobBoard`, asyncio) and the worker side (`WorkerBoard`, threads) are
different processes, often on different machines; they agree on the board only through
these names. Tests pass a unique prefix so that runs never see each other's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "atelier:"
FINAL_STATES = ("succeeded", "failed", "cancelled")
ACTIVE_STATES = ("dispatched", "running")
FINISHED_TTL_S = 86_400  # finished job hashes are kept a day for late readers


@dataclass(frozen=True)
class BoardKeys:
    """Key names under one prefix ("atelier:" in production)."""

    prefix: str = DEFAULT_PREFIX

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def queue(self, owner: str) -> str:
        return f"{self.prefix}queue:{owner}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def lease(self, job_id: str) -> str:
        """Present while an app process awaits the job (it renews the key's TTL)."""
        return f"{self.prefix}lease:{job_id}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}worker:{name}"

    def busy(self, name: str) -> str:
        return f"{self.prefix}busy:{name}"

    @property
    def ring(self) -> str:
        return f"{self.prefix}ring"

    @property
    def active(self) -> str:
        return f"{self.prefix}active"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"

    @property
    def stats(self) -> str:
        return f"{self.prefix}stats"

    @property
    def kick(self) -> str:
        return f"{self.prefix}kick"

    @property
    def lock(self) -> str:
        return f"{self.prefix}lock"


def worker_queue(name: str) -> str:
    """The Celery queue a worker consumes; only the dispatcher sends to it."""
    return f"atelier.worker.{name}"
