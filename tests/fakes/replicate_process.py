"""The fake Replicate server in a process of its own, for benchmarks that must not share
their event loop (and CPU time) with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class ReplicateServerProcess:
    """`python -m tests.fakes.replicate_server --latency S [options]` until closed."""

    def __init__(self, latency_s: float, *options: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes.replicate_server",
                "--port",
                "0",
                "--latency",
                str(latency_s),
                *options,
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"the fake did not start: {line!r}")
        self.base_url = line.split()[1]

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
