"""Run the real app (`atelier run`) in a subprocess, as a user would, for tests."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.fakes.server_process import stop_process

ADMIN_PASSWORD = "admin-password-for-tests"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"app-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> AppProcess:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "ATELIER_", "REPLICATE_", "CHAINLIT_AUTH"))
        }
        env.update(
            {
                "ATELIER_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "ATELIER_LOG_JSON": "1",
                "PYTHONUNBUFFERED": "1",
                # Tests never reach the internet: the hub fails at once instead of retrying.
                "HF_HUB_OFFLINE": "1",
                # Each app would import torch in the background for the first image it
                # stores (likeness embeddings): tests that search by likeness turn it on.
                "ATELIER_GALLERY_LIKENESS": "false",
                **self.env,
            }
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chat_app.cli",
                "run",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited early:\n{self.log()}")
            try:
                if httpx.get(self.base_url + "/auth/config", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"app did not start in {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None

    def restart(self) -> AppProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def add_user(app: AppProcess, name: str, password: str) -> None:
    """Create an account with the CLI, as an operator would."""
    subprocess.run(
        [sys.executable, "-m", "chat_app.cli", "users", "--data-dir", str(app.data_dir)]
        + ["add", name, "--password-stdin"],
        input=password + "\n",
        text=True,
        check=True,
        capture_output=True,
    )


def app_rows(app: AppProcess, sql: str) -> list[sqlite3.Row]:
    """Rows from the app's own SQLite database, read back as a user's data would be."""
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()


def app_errors(app: AppProcess) -> list[str]:
    """Error lines in the app's log: structlog JSON at level error, or stdlib ERROR.

    Skipped: Starlette's "No response returned" when the browser drops a request while
    navigating (a client disconnect inside Chainlit's middleware, not an app error).
    """
    lines = app.log().splitlines()
    errors = []
    for index, line in enumerate(lines):
        if not ('"level": "error"' in line or line.startswith(("ERROR:", "CRITICAL:"))):
            continue
        following = lines[index + 1 : index + 80]
        end = next((i for i, text in enumerate(following) if text.startswith("ERROR:")), 80)
        if "RuntimeError: No response returned." in following[:end] and any(
            "anyio.EndOfStream" in text for text in following[:end]
        ):
            continue
        errors.append(line)
    return errors


def clean_env() -> dict[str, str]:
    """This environment without OPENAI_* and ATELIER_* settings: the `atelier` command
    sees only what a test gives it."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ATELIER_"))}


def atelier(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `atelier` command (not the server) to its end, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "chat_app.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean_env(), **(env or {})},
        cwd=ROOT,
        timeout=120,
    )
