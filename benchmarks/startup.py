"""Start-up: `atelier run` to its first 200 on `/`, against a bare Chainlit app.

Each side is started as an operator would, in its own process, on a free port, and `/`
is polled every 20 ms from the moment the process is spawned until it answers 200:

- ours: `python -m chat_app.cli run` with a temporary data dir and the embedded
  defaults (SQLite, local files). Fake OpenAI and Replicate keys point at a closed port
  on localhost, so every hosted backend is configured, as in a real set-up, and nothing
  is ever reached (`--no-keys` starts it without them);
- baseline: `chainlit run benchmarks/echo_app.py --headless`, a bare Chainlit app with
  password login, with the same `.chainlit/config.toml`.

One untimed warm-up each first (ours on a fresh data dir, so it includes the migrations;
its time is shown), then N timed starts each, alternating so drift hits both alike, all
on the warmed-up data dir. After each start, the idle resident memory of the process is
read (after a short settle), then the process is stopped.

Compiled bytecode is kept between starts, as an installed app keeps it, in a temporary
PYTHONPYCACHEPREFIX (filled by the warm-ups; the source tree is left alone), whatever
PYTHONDONTWRITEBYTECODE says; `--no-bytecode-cache` compiles every module at every
start instead. `--app-dir` starts ours from another checkout (e.g. a copy from before a
change), against the same baseline.

    .venv/bin/python benchmarks/startup.py [--runs 5 --no-keys --no-bytecode-cache
        --app-dir DIR]

Target: median time to first 200 of ours < 3 s. Exit status 1 when it is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.app_process import free_port  # noqa: E402
from tests.fakes.server_process import stop_process  # noqa: E402

TARGET_S = 3.0
POLL_S = 0.02
SETTLE_S = 1.0  # idle time before the memory is read
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing answers there


def base_env(pycache: Path | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "ATELIER_", "REPLICATE_", "CHAINLIT_", "LITERAL_"))
    }
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"})
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children, in MiB."""
    total_kib = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    label: str
    seconds: list[float] = field(default_factory=list)  # spawn to the first 200
    cpu: list[float] = field(default_factory=list)  # CPU seconds used by then
    rss: list[float] = field(default_factory=list)  # MiB, idle after the start

    def line(self) -> str:
        return (
            f"{self.label:<22} median {statistics.median(self.seconds):5.2f} s"
            f"  min {min(self.seconds):5.2f} s  max {max(self.seconds):5.2f} s"
            f"  CPU to ready {statistics.median(self.cpu):5.2f} s"
            f"  idle RSS {statistics.median(self.rss):4.0f} MiB"
        )


def start_once(
    command: list[str], env: dict[str, str], cwd: Path, port: int, log: Path
) -> tuple[float, float, float]:
    """Seconds from spawn to the first 200 on `/`, the CPU seconds the process used by
    then (what the load of the machine changes least), and its idle RSS after it (MiB)."""
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        with httpx.Client(timeout=5) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        elapsed = time.perf_counter() - started
                        cpu = cpu_seconds(proc.pid)
                        break
                except httpx.HTTPError:
                    pass
                if time.perf_counter() - started > 120:
                    raise RuntimeError(f"no 200 on / in 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(POLL_S)
        time.sleep(SETTLE_S)
        return elapsed, cpu, rss_mib(proc.pid)
    finally:
        stop_process(proc)


def ours(
    data_dir: Path, port: int, keys: bool, pycache: Path | None
) -> tuple[list[str], dict[str, str]]:
    env = base_env(pycache)
    env["ATELIER_ADMIN_PASSWORD"] = "admin-password-for-the-benchmark"
    if keys:
        env.update(
            {
                "OPENAI_API_KEY": "sk-fake-key-for-the-benchmark",
                "OPENAI_BASE_URL": CLOSED_PORT_URL + "/v1",
                "REPLICATE_API_TOKEN": "r8_fake-token-for-the-benchmark",
                "REPLICATE_BASE_URL": CLOSED_PORT_URL,
            }
        )
    command = [sys.executable, "-m", "chat_app.cli", "run", "--port", str(port)]
    return command + ["--data-dir", str(data_dir)], env


def echo(app_root: Path, port: int, pycache: Path | None) -> tuple[list[str], dict[str, str]]:
    env = base_env(pycache)
    env["CHAINLIT_AUTH_SECRET"] = "x" * 48
    env["CHAINLIT_APP_ROOT"] = str(app_root)
    command = [sys.executable, "-m", "chainlit", "run", str(REPO / "benchmarks" / "echo_app.py")]
    return command + ["--headless", "--host", "127.0.0.1", "--port", str(port)], env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-keys", action="store_true", help="no hosted backends configured")
    parser.add_argument(
        "--no-bytecode-cache", action="store_true", help="compile every module at every start"
    )
    parser.add_argument("--app-dir", type=Path, default=REPO, help="the checkout to start")
    args = parser.parse_args()
    app_dir = args.app_dir.resolve()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="atelier-startup-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        pycache = None if args.no_bytecode_cache else work / "pycache"
        echo_root = work / "echo"
        (echo_root / ".chainlit").mkdir(parents=True)
        shutil.copy(REPO / ".chainlit" / "config.toml", echo_root / ".chainlit" / "config.toml")

        def run_ours() -> tuple[float, float, float]:
            port = free_port()
            command, env = ours(data_dir, port, not args.no_keys, pycache)
            return start_once(command, env, app_dir, port, work / "ours.log")

        def run_echo() -> tuple[float, float, float]:
            port = free_port()
            command, env = echo(echo_root, port, pycache)
            return start_once(command, env, REPO, port, work / "echo.log")

        first, _, _ = run_ours()  # fresh data dir: migrations, the admin account, bytecode
        run_echo()
        ours_side, echo_side = Side("atelier run"), Side("bare Chainlit (echo)")
        for _ in range(args.runs):
            for side, run in ((ours_side, run_ours), (echo_side, run_echo)):
                seconds, cpu, rss = run()
                side.seconds.append(seconds)
                side.cpu.append(cpu)
                side.rss.append(rss)

    keys = "no keys" if args.no_keys else "fake OpenAI and Replicate keys, nothing reachable"
    code = "compiled every start" if args.no_bytecode_cache else "bytecode cached"
    print(f"Start-up to first 200 on /, {args.runs} alternated runs each ({keys}; {code})")
    if app_dir != REPO:
        print(f"  ours started from {app_dir}")
    load_after = os.getloadavg()[0]
    print(f"  load average (1 min) before/after: {load_before:.2f}/{load_after:.2f}")
    compiling = "" if args.no_bytecode_cache else ", compiling into the empty bytecode cache"
    print(f"  first start of ours on a fresh data dir (migrations{compiling}): {first:.2f} s")
    print("  " + ours_side.line())
    print("  " + echo_side.line())
    ours_median = statistics.median(ours_side.seconds)
    ratio = ours_median / statistics.median(echo_side.seconds)
    cpu_ratio = statistics.median(ours_side.cpu) / statistics.median(echo_side.cpu)
    extra_rss = statistics.median(ours_side.rss) - statistics.median(echo_side.rss)
    print(
        f"  ratio (median) to the bare Chainlit app: {ratio:.2f}x the time, "
        f"{cpu_ratio:.2f}x the CPU; idle RSS {extra_rss:+.0f} MiB"
    )
    passed = ours_median < TARGET_S
    verdict = "PASS" if passed else "FAIL"
    print(f"  target: median < {TARGET_S:.1f} s: {ours_median:.2f} s -> {verdict}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
