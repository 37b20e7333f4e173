"""Load for benchmarks/turn_latency.py: the servers, the accounts, the sessions, the turns.

Everything here speaks to real processes the way a browser and an operator would: the
accounts are made with the app's own UserStore (argon2 hashes) before the app starts,
each session logs in with POST /login and chats over Socket.IO (tests/chat_client.py),
and the server's CPU is read from /proc around each measured phase only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.chat_client import ChatSession  # noqa: E402
from tests.fakes.server_process import OpenAIServerProcess, stop_process  # noqa: E402

PASSWORD = "bench-password-123"  # every account's; the echo app takes it as ECHO_PASSWORD
BROWSER_CONNECT_TIMEOUT_S = 20.0  # socket.io-client's default `timeout`
# What the app writes into a reply when a turn failed on its side (chat_app/rendering.py,
# chat_app/turn.py) or what a failing store lets through to the chat.
ERROR_MARKERS = (
    "Could not do that",
    "Something went wrong",
    "Could not save",
    "database is locked",
)


# --------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, its reaped children and its live descendants.

    Read before and after a phase, the difference is the server's work for that phase,
    whatever the client and the fakes cost (they are other processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            # after the name: state is [0], so utime, stime, cutime, cstime are [11:15]
            total += sum(int(value) for value in fields[11:15]) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no 200 on {url} in {timeout:g} s:\n{log.read_text()[-3000:]}")


def clean_env() -> dict[str, str]:
    """This environment without anything that would configure an app by accident."""
    prefixes = ("OPENAI_", "ATELIER_", "REPLICATE_", "CHAINLIT_", "LITERAL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)})
    return env


class FakeOpenAIProcess(OpenAIServerProcess):
    """The fake OpenAI in a process of its own, with none of our settings in its env."""

    def __init__(self) -> None:
        super().__init__(env=clean_env())


class EchoProcess:
    """benchmarks/echo_app.py under `chainlit run`, with the app's .chainlit/config.toml."""

    def __init__(self, work: Path, port: int) -> None:
        root = work / "echo"
        (root / ".chainlit").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / ".chainlit" / "config.toml", root / ".chainlit" / "config.toml")
        self.port = port
        self.log_path = work / "echo.log"
        env = clean_env()
        env.update(
            {
                "CHAINLIT_AUTH_SECRET": uuid.uuid4().hex + uuid.uuid4().hex,
                "CHAINLIT_APP_ROOT": str(root),
                "ECHO_PASSWORD": PASSWORD,
            }
        )
        command = [sys.executable, "-m", "chainlit", "run", str(REPO / "benchmarks/echo_app.py")]
        command += ["--headless", "--host", "127.0.0.1", "--port", str(port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            _wait_ready(self.proc, f"{self.base_url}/auth/config", self.log_path)
        except RuntimeError:
            self.stop()
            raise

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --------------------------------------------------------------------------- databases


async def create_users(url: str, names: list[str], password: str) -> None:
    """Real accounts through the app's own store (argon2, on its bounded hash pool)."""
    from memory.db import create_engine, migrate, session_factory
    from memory.users import UserStore

    engine = create_engine(url)
    try:
        await migrate(engine)
        store = UserStore(session_factory(engine))
        await asyncio.gather(*(store.add(name, password) for name in names))
    finally:
        await engine.dispose()


def copy_sqlite(source_dir: Path, target_dir: Path) -> None:
    """A second app's database with the same accounts, without hashing them again."""
    target_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        source = source_dir / f"atelier.db{suffix}"
        if source.exists():
            shutil.copy(source, target_dir / source.name)


class Postgres:
    """Fresh databases for one run on the server of `admin_url`, dropped at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.names: list[str] = []

    def url(self, name: str) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.admin_dsn, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self, template: str | None = None) -> str:
        name = f"atelier_bench_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template}"' if template else ""
        await self._admin(f'CREATE DATABASE "{name}"{copy}')
        self.names.append(name)
        return name

    async def drop_all(self) -> None:
        for name in reversed(self.names):
            await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.names.clear()


# --------------------------------------------------------------------------- sessions


@dataclass
class BenchSession(ChatSession):
    """ChatSession that also connects to the echo app, which sends no welcome message:
    there, the task_end that Chainlit sends on `connection_successful` means ready.

    And it waits for the Socket.IO namespace as long as a browser does: python-socketio's
    client gives up after 1 s (`wait_timeout`), which a server accepting 50 connections
    at once on a busy machine may take, where the browser's socket.io-client waits 20 s.
    """

    echo: bool = False
    dead: str | None = None  # why this session can take no more turns

    @property
    def sio(self) -> Any:
        return self._sio

    @sio.setter
    def sio(self, client: Any) -> None:
        """ChatSession.connect makes its client, then connects it: wrap that connect."""
        connect = client.connect

        async def connect_like_a_browser(*args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("wait_timeout", BROWSER_CONNECT_TIMEOUT_S)
            await connect(*args, **kwargs)

        client.connect = connect_like_a_browser
        self._sio = client

    def _chat_started(self) -> bool:
        if self.echo:
            return any(event == "task_end" for event, _ in self.events)
        return super()._chat_started()


async def login(base_url: str, name: str, password: str) -> str:
    """POST /login as the login form does (tests/chat_client.login_cookie, but async, so
    that all of a level's sessions log in at once); returns the Cookie header."""
    async with httpx.AsyncClient(timeout=180) as client:
        response = await client.post(
            f"{base_url}/login", data={"username": name, "password": password}
        )
        response.raise_for_status()
        cookies = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    if not cookies:
        raise RuntimeError("login set no cookie")
    return cookies


@dataclass
class Opened:
    """A level's sessions on one server, and how getting them went."""

    sessions: list[BenchSession]
    login_seconds: list[float]
    login_failures: list[str]
    connect_seconds: list[float]  # connect to the welcome message (or task_end)
    connect_failures: list[str]


async def open_sessions(base_url: str, names: list[str], echo: bool) -> Opened:
    """Log every account in at once, then connect every session at once."""

    async def one_login(name: str) -> tuple[str | None, float, str | None]:
        started = time.perf_counter()
        try:
            cookie = await login(base_url, name, PASSWORD)
        except Exception as exc:  # noqa: BLE001 - counted and shown, never hidden
            return None, 0.0, f"login {name}: {type(exc).__name__}: {exc}"[:300]
        return cookie, time.perf_counter() - started, None

    logins = await asyncio.gather(*(one_login(name) for name in names))
    sessions = [
        BenchSession(base_url, cookie, echo=echo, ask_answer="confirm_spend")
        for cookie, _, _ in logins
        if cookie is not None
    ]

    async def connect(session: BenchSession) -> tuple[float, str | None]:
        started = time.perf_counter()
        try:
            await session.connect()
        except Exception as exc:  # noqa: BLE001
            return 0.0, f"connect: {type(exc).__name__}: {exc}"[:300]
        return time.perf_counter() - started, None

    connects = await asyncio.gather(*(connect(session) for session in sessions))
    return Opened(
        sessions=[s for s, (_, problem) in zip(sessions, connects, strict=True) if not problem],
        login_seconds=[seconds for cookie, seconds, _ in logins if cookie is not None],
        login_failures=[problem for _, _, problem in logins if problem],
        connect_seconds=[seconds for seconds, problem in connects if not problem],
        connect_failures=[problem for _, problem in connects if problem],
    )


async def close_sessions(sessions: list[BenchSession]) -> None:
    async def close(session: BenchSession) -> None:
        with contextlib.suppress(Exception):  # a session that is gone is closed
            await session.close()

    await asyncio.gather(*(close(session) for session in sessions))


# --------------------------------------------------------------------------- turns


def _outputs(messages: list[dict[str, Any]]) -> list[str]:
    return [str(m.get("output") or "") for m in messages]


def _error_in(texts: list[str]) -> str | None:
    for text in texts:
        if any(marker in text for marker in ERROR_MARKERS):
            return text[:300]
    return None


def expect_text(marker: str, exact: bool = False) -> Callable[..., str | None]:
    def check(messages: list[dict[str, Any]], elements: list[Any]) -> str | None:
        texts = _outputs(messages)
        if error := _error_in(texts):
            return error
        if any((text == marker) if exact else (marker in text) for text in texts):
            return None
        return f"no {marker!r} in the reply: {texts!r}"[:300]

    return check


def expect_image(messages: list[dict[str, Any]], elements: list[Any]) -> str | None:
    texts = _outputs(messages)
    if error := _error_in(texts):
        return error
    if any(isinstance(e, dict) and e.get("type") == "image" for e in elements):
        return None
    return f"no image element in the reply: {texts!r}"[:300]


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # "echo", "command" or "agent": which process answers
    text: str
    check: Callable[[list[dict[str, Any]], list[Any]], str | None]


@dataclass
class Phase:
    """One scenario's measured turns on one level's sessions."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful turns only
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # the server's
    client_cpu_s: float = 0.0  # this process's: the sessions' Socket.IO work
    fake_cpu_s: float = 0.0  # the fake OpenAI server's
    asks: int = 0

    @property
    def turns(self) -> int:
        return len(self.latencies) + len(self.failures)

    def merge(self, other: Phase) -> None:
        self.latencies += other.latencies
        self.failures += other.failures
        self.wall_s += other.wall_s
        self.cpu_s += other.cpu_s
        self.client_cpu_s += other.client_cpu_s
        self.fake_cpu_s += other.fake_cpu_s
        self.asks += other.asks


async def _turn(
    session: BenchSession, scenario: Scenario, turn_timeout_s: float, phase: Phase
) -> None:
    if session.dead:
        phase.failures.append(f"{scenario.name}: not sent, the session is lost: {session.dead}")
        return
    elements_before, asks_before = len(session.elements), len(session.asks)
    started = time.perf_counter()
    try:
        messages = await session.send(scenario.text, timeout=turn_timeout_s)
    except Exception as exc:  # noqa: BLE001 - a timeout or a lost socket is a failed turn
        session.dead = f"{type(exc).__name__} {exc}".strip()[:200]
        phase.failures.append(f"{scenario.name}: {session.dead}")
        return
    elapsed = time.perf_counter() - started
    phase.asks += len(session.asks) - asks_before
    problem = scenario.check(messages, session.elements[elements_before:])
    if problem:
        phase.failures.append(f"{scenario.name}: {problem}")
    else:
        phase.latencies.append(elapsed)


async def run_phase(
    sessions: list[BenchSession],
    scenario: Scenario,
    turns: int,
    pid: int,
    turn_timeout_s: float,
    fake_pid: int | None = None,
) -> Phase:
    """Every session sends `turns` messages one after another, all sessions at once; the
    server's CPU (and the client's and the fake's, to show where the time went) is read
    just before the first and just after the last."""
    phase = Phase()

    async def one(session: BenchSession) -> None:
        for _ in range(turns):
            await _turn(session, scenario, turn_timeout_s, phase)

    fake_before = cpu_seconds(fake_pid) if fake_pid else 0.0
    client_before, cpu_before = time.process_time(), cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(session) for session in sessions))
    phase.wall_s = time.perf_counter() - started
    phase.cpu_s = cpu_seconds(pid) - cpu_before
    phase.client_cpu_s = time.process_time() - client_before
    phase.fake_cpu_s = (cpu_seconds(fake_pid) - fake_before) if fake_pid else 0.0
    return phase


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: with few turns it is a real turn)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
