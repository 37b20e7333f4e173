"""The fake servers in processes of their own, for benchmarks that must not share their
event loop (and CPU time) with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not ended after `grace_s`; nothing if it has ended."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class ServerProcess:
    """`python -m MODULE --port 0 ARGS...` until closed; it prints `READY <base url>`."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**(os.environ if env is None else env), "PYTHONPATH": str(REPO)},
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"the fake {module} did not start: {line!r}")
        self.base_url = line.split()[1]

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        stop_process(self.process, 10)


class ReplicateServerProcess(ServerProcess):
    """The fake Replicate with `latency_s` per request (and its other options)."""

    def __init__(self, latency_s: float, *options: str) -> None:
        super().__init__("tests.fakes.replicate_server", "--latency", str(latency_s), *options)


class OpenAIServerProcess(ServerProcess):
    """The fake OpenAI (zero latency): its streaming and PNG encoding stay off our core."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__("tests.fakes.openai_server", env=env)
