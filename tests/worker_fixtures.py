"""Real `atelier worker` subprocesses on the CPU, for tests and benchmarks.

    pool = WorkerPool(tmp_path)              # a unique Redis key prefix, its own logs
    pool.start("w1"); pool.start("w2", kinds=("image",))
    pool.wait_ready()                        # every started worker's heartbeat is seen
    runner = pool.runner()                   # a CeleryJobRunner on the same board
    async with pool.dispatching(runner): ... # its dispatcher loop runs meanwhile
    pool.kill("w1")                          # SIGKILL (a worker that dies mid-job)
    pool.stop()                              # SIGTERM, then SIGKILL; the prefix's keys go

`pool.env` is what an app process (or another worker) needs to join the same board:
ATELIER_BROKER_URL, ATELIER_BROKER_PREFIX, and the CPU and offline settings. Each
pool's prefix is unique, and Celery's queues live under it too, so parallel test runs
and benchmarks never share a queue. Worker logs are `pool.log(name)`; a worker that
exits before its first heartbeat fails `wait_ready` with its log.

The `worker_pool` fixture yields a pool that is stopped after the test; module-scoped
pools (to share the few seconds each worker takes to import torch) are made with
`WorkerPool(...)` in the test module's own fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
READY_TIMEOUT_S = 120.0


@dataclass
class WorkerPool:
    """Worker subprocesses sharing one board prefix; see the module docstring."""

    folder: Path
    redis_url: str = REDIS_URL
    prefix: str = field(default_factory=lambda: f"atelier-test-{uuid.uuid4().hex[:8]}:")
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {
            "ATELIER_BROKER_URL": self.redis_url,
            "ATELIER_BROKER_PREFIX": self.prefix,
            "ATELIER_LOCAL_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",  # tiny models: one thread is fastest, and deterministic
            **self.extra_env,
        }

    def settings(self) -> SimpleNamespace:
        """What `pipelines.job_runners.build_remote` reads."""
        return SimpleNamespace(
            broker_url=self.redis_url, broker_prefix=self.prefix, redis_url=self.redis_url
        )

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(
        self,
        name: str,
        *,
        kinds: tuple[str, ...] = ("image", "video", "training", "embedding"),
        device: str = "cpu",
    ) -> None:
        """Start worker `name` (again, after a kill) on `device`."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data_dir = self.folder / "data"
        data_dir.mkdir(exist_ok=True)
        env = {**os.environ, **self.env, "ATELIER_DATA_DIR": str(data_dir)}
        command = [sys.executable, "-m", "chat_app.cli", "worker", "--device", device]
        command += ["--name", name, "--queues", ",".join(kinds)]
        with open(self.folder / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, *names: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until each worker (default: all started) has sent a heartbeat."""
        import redis

        from pipelines.remote.board_keys import BoardKeys

        keys = BoardKeys(self.prefix)
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            for name in names or tuple(self.processes):
                while not client.exists(keys.worker(name)):
                    process = self.processes[name]
                    if process.poll() is not None:
                        raise RuntimeError(f"worker {name} exited:\n{self.log(name)}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"worker {name} sent no heartbeat:\n{self.log(name)}")
                    time.sleep(0.1)
        finally:
            client.close()

    def kill(self, name: str) -> None:
        """SIGKILL: the worker dies without a word, as on a crash or a lost machine."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def runner(self) -> Any:
        """A CeleryJobRunner on this pool's board (close it with `await runner.aclose()`)."""
        from pipelines.job_runners import build_remote

        return build_remote(self.settings())

    @contextlib.asynccontextmanager
    async def dispatching(self, runner: Any) -> AsyncIterator[Any]:
        """Run the runner's board dispatcher loop for the block; close the runner after."""
        stop = asyncio.Event()
        task = asyncio.create_task(runner.board.run_dispatcher(stop, tick_s=0.2))
        try:
            yield runner
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 5)
            finally:
                await runner.aclose()

    def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 10 s) and delete the prefix's keys."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


@pytest.fixture
def worker_pool(tmp_path: Path) -> Iterator[WorkerPool]:
    """A pool with no workers started yet; stopped and cleaned after the test."""
    pool = WorkerPool(tmp_path / "workers")
    try:
        yield pool
    finally:
        pool.stop()
