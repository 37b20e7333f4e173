"""API overhead: what Atelier's /v1 images endpoint adds per image over the backend itself.

Two ways to get the same image, both with the real `openai` client (AsyncOpenAI, with
retries off so that no error is hidden by a retry), both in this process and event loop:

- direct: `images.generate` against the fake OpenAI server (tests/fakes/openai_server.py,
          zero latency, in a process of its own) — the backend called directly, the
          baseline, measured in the same run;
- api:    the same call against the app (`atelier run` in a subprocess) at
          `/v1/images/generations` with an Atelier API token; the app authenticates the
          token, admits it under its limits, prices and reserves the image, calls the
          same fake through its OpenAI backend, stores the image with its parameters in
          the per-token "API" conversation, settles the ledger and answers in OpenAI's
          shape.

The fake encodes the same 1024x1024 PNG for both (same prompt, same size), so the
difference of the two latencies is what Atelier adds.

1. Overhead, one client: R rounds, each one direct request then one API request (so
   drift hits both alike), each for `--n` images (1: the worst case, nothing shared).
   Per image: (p50(api) - p50(direct)) / n, and the median of the paired differences;
   beside it the app's CPU per image (/proc utime+stime of the app process and its
   children, read before and after the API requests).
2. Load: C API clients at once (default 50), each with its own user and token and its own
   connection pool, each sending T requests one after another; the same with C direct
   clients as the baseline. p50, p95, throughput, errors. Afterwards every image the API
   answered must be in the database (table `images`), and every ledger entry settled.

Accounts and tokens are made with the app's own stores (UserStore, ApiTokenStore) in the
app's SQLite file before it starts. Limits that would otherwise refuse a benchmark are
raised through their documented settings: ATELIER_API_RATE_PER_MINUTE,
ATELIER_API_CONCURRENT_JOBS and ATELIER_CONFIRM_ABOVE_USD.

    .venv/bin/python benchmarks/api_overhead.py [--rounds 40] [--clients 50]
        [--requests 4] [--format b64_json|url] [--n 1] [--keep]

Targets: overhead per image (p50 difference) < 15 ms; with C=50 clients, zero errors,
every image stored, p95 reported. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from benchmarks.turn_load import (  # noqa: E402
    PASSWORD,
    FakeOpenAIProcess,
    cpu_seconds,
    create_users,
    percentile,
)
from tests.app_process import AppProcess  # noqa: E402

TARGET_OVERHEAD_MS = 15.0
PROMPT = "a lighthouse on a cliff at dusk"
SIZE = "1024x1024"
QUALITY = "low"
FAKE_MODEL = "gpt-image-2"  # the app's default image model (ATELIER_IMAGE_MODEL)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Phase:
    """Requests of one kind: latencies of the successful ones, and the failures."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    images: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies) + len(self.failures)

    def p(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else float("nan")


# --------------------------------------------------------------------------- set-up


async def make_accounts(data_dir: Path, count: int) -> list[str]:
    """`count` users with one API token each, through the app's own stores; the tokens."""
    from memory.api_tokens import ApiTokenStore
    from memory.db import create_engine, session_factory

    url = f"sqlite+aiosqlite:///{data_dir / 'atelier.db'}"
    names = [f"api-bench-{i:03d}" for i in range(count)]
    await create_users(url, names, PASSWORD)  # migrates first
    engine = create_engine(url)
    try:
        store = ApiTokenStore(session_factory(engine))
        tokens = []
        for name in names:  # one at a time: SQLite has one writer
            _, plaintext = await store.add(await store.user_id(name), f"bench {name}")
            tokens.append(plaintext)
        return tokens
    finally:
        await engine.dispose()


def start_app(data_dir: Path, fake: FakeOpenAIProcess) -> AppProcess:
    env = {
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": fake.base_url,
        "ATELIER_IMAGE_MODEL": FAKE_MODEL,
        # Documented limits, raised so that the benchmark measures work, not refusals.
        "ATELIER_API_RATE_PER_MINUTE": "100000",
        "ATELIER_API_CONCURRENT_JOBS": "1000",
        "ATELIER_CONFIRM_ABOVE_USD": "1000",
    }
    return AppProcess(data_dir, env).start(timeout=120)


def client(base_url: str, key: str) -> AsyncOpenAI:
    """A real client with a pool of its own; no retries, so every error counts."""
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    return AsyncOpenAI(
        base_url=base_url,
        api_key=key,
        max_retries=0,
        timeout=120,
        http_client=httpx.AsyncClient(limits=limits, timeout=120),
    )


# --------------------------------------------------------------------------- requests


async def one_request(
    openai: AsyncOpenAI, model: str | None, response_format: str, n: int
) -> str | None:
    """One request for `n` images; None when they came back whole, else what went wrong."""
    kwargs: dict = {"prompt": PROMPT, "size": SIZE, "quality": QUALITY, "n": n}
    if model:
        kwargs["model"] = model
    if response_format != "b64_json":
        kwargs["response_format"] = response_format
    try:
        answer = await openai.images.generate(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a benchmark counts every failure
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    if not answer.data or len(answer.data) != n:
        return f"{len(answer.data or [])} images, expected {n}"
    for item in answer.data:
        if item.b64_json:
            if not base64.b64decode(item.b64_json).startswith(PNG_SIGNATURE):
                return "b64_json is not a PNG"
        elif not item.url:
            return "neither b64_json nor url in the answer"
    return None


async def timed(openai: AsyncOpenAI, model: str | None, fmt: str, phase: Phase, n: int = 1) -> None:
    started = time.perf_counter()
    problem = await one_request(openai, model, fmt, n)
    elapsed = time.perf_counter() - started
    if problem is None:
        phase.latencies.append(elapsed)
        phase.images += n
    else:
        phase.failures.append(problem)


async def overhead(
    direct: AsyncOpenAI, api: AsyncOpenAI, model: str | None, args: argparse.Namespace, pid: int
) -> tuple[Phase, Phase, list[float], float]:
    """(direct, api, paired differences in s, app CPU s per API image), one client."""
    base, ours = Phase(), Phase()
    pairs: list[float] = []
    cpu = 0.0
    for _ in range(args.rounds):
        await timed(direct, FAKE_MODEL, "b64_json", base, args.n)
        before = cpu_seconds(pid)
        await timed(api, model, args.format, ours, args.n)
        cpu += cpu_seconds(pid) - before
        if base.latencies and ours.latencies and not base.failures and not ours.failures:
            pairs.append(ours.latencies[-1] - base.latencies[-1])
    return base, ours, pairs, cpu / max(1, ours.images)


async def load(clients: list[AsyncOpenAI], model: str | None, fmt: str, requests: int) -> Phase:
    """Every client sends `requests` images one after another, all clients at once."""
    phase = Phase()

    async def run(openai: AsyncOpenAI) -> None:
        for _ in range(requests):
            await timed(openai, model, fmt, phase)

    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in clients))
    phase.wall_s = time.perf_counter() - started
    return phase


async def pick_model(api: AsyncOpenAI) -> str | None:
    """The id /v1/models lists for the fake's model (an `openai:` id), else the default."""
    listed = [m.id for m in (await api.models.list()).data]
    for wanted in (f"openai:{FAKE_MODEL}", FAKE_MODEL):
        if wanted in listed:
            return wanted
    return None


def stored(data_dir: Path) -> tuple[int, dict[str, int]]:
    """(images in the database, ledger entries by status), read back after the run."""
    with sqlite3.connect(data_dir / "atelier.db") as db:
        images = db.execute("SELECT count(*) FROM images").fetchone()[0]
        ledger = dict(db.execute("SELECT status, count(*) FROM ledger_entries GROUP BY status"))
    return images, ledger


# --------------------------------------------------------------------------- main


def row(name: str, phase: Phase) -> str:
    return (
        f"  {name:<22} {len(phase.latencies):5d} ok {len(phase.failures):4d} failed"
        f"  p50 {phase.p(0.5):8.1f} ms  p95 {phase.p(0.95):8.1f} ms"
        + (f"  {phase.throughput:6.1f} images/s" if phase.wall_s else "")
    )


async def run(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="atelier-api-"))
    data_dir = work / "data"
    fake = FakeOpenAIProcess()
    app: AppProcess | None = None
    opened: list[AsyncOpenAI] = []
    checks: list[tuple[str, bool]] = []
    try:
        started = time.perf_counter()
        data_dir.mkdir(parents=True)
        tokens = await make_accounts(data_dir, max(1, args.clients))
        print(f"{len(tokens)} users with a token each in {time.perf_counter() - started:.1f} s")
        app = start_app(data_dir, fake)
        api_url = f"{app.base_url}/v1"
        assert app.proc is not None
        pid = app.proc.pid

        api_clients = [client(api_url, token) for token in tokens]
        direct_clients = [client(fake.base_url, "sk-test") for _ in tokens]
        opened += api_clients + direct_clients
        model = await pick_model(api_clients[0])
        print(f"model asked of the app: {model or '(its default)'}; format {args.format}")

        # Warm-up, untimed: lazy imports, each token's "API" conversation, connections.
        warm = await load(api_clients, model, args.format, 1)
        await load(direct_clients, FAKE_MODEL, "b64_json", 1)
        checks.append(
            (f"warm-up: {len(warm.failures)} failed API requests == 0", not warm.failures)
        )
        for problem in warm.failures[:3]:
            print(f"  warm-up failure: {problem}")

        print(
            f"Overhead, one client, {args.rounds} rounds (direct, then API),"
            f" {args.n} image(s) per request:"
        )
        base, ours, pairs, cpu = await overhead(direct_clients[0], api_clients[0], model, args, pid)
        print(row("direct (fake)", base))
        print(row("api (app -> fake)", ours))
        extra = (ours.p(0.5) - base.p(0.5)) / args.n
        paired = statistics.median(pairs) * 1000 / args.n if pairs else float("nan")
        print(
            f"  overhead per image: p50 {extra:.1f} ms (median of paired differences"
            f" {paired:.1f} ms); app CPU {cpu * 1000:.1f} ms per image"
        )
        checks.append(
            (
                f"overhead per image p50 {extra:.1f} ms < {TARGET_OVERHEAD_MS:g} ms",
                extra < TARGET_OVERHEAD_MS and not ours.failures,
            )
        )

        print(f"Load: {len(tokens)} clients at once, {args.requests} requests each:")
        base_load = await load(direct_clients, FAKE_MODEL, "b64_json", args.requests)
        before = cpu_seconds(pid)
        api_load = await load(api_clients, model, args.format, args.requests)
        load_cpu = (cpu_seconds(pid) - before) / max(1, len(api_load.latencies))
        print(row("direct (fake)", base_load))
        print(row("api (app -> fake)", api_load))
        print(
            f"  p95 {api_load.p(0.95):.1f} ms = {api_load.p(0.95) / base_load.p(0.95):.2f}x"
            f" direct's {base_load.p(0.95):.1f} ms; app CPU {load_cpu * 1000:.1f} ms per image"
        )
        for problem in api_load.failures[:5]:
            print(f"  failure: {problem}")
        checks.append(
            (
                f"C={len(tokens)}: {len(api_load.failures)} failed API requests == 0"
                f" (p95 {api_load.p(0.95):.1f} ms)",
                not api_load.failures,
            )
        )

        answered = warm.images + ours.images + api_load.images
        images, ledger = stored(data_dir)
        unsettled = {status: n for status, n in ledger.items() if status != "settled"}
        print(f"database: {images} images stored for {answered} answered; ledger {ledger}")
        checks.append((f"images stored {images} == answered {answered}", images == answered))
        checks.append((f"ledger entries not settled: {unsettled or 'none'}", not unsettled))
    finally:
        for opened_client in opened:
            await opened_client.close()
        if app is not None:
            app.stop()
            if args.keep or any(not ok for _, ok in checks):
                errors = [line for line in app.log().splitlines() if '"level": "error"' in line]
                for line in errors[:5]:
                    print(f"  app log: {line[:300]}")
        fake.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"load average (1 min) before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f}"
        f" on {os.cpu_count()} cores"
    )
    print("Targets:")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return 0 if checks and all(ok for _, ok in checks) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40, help="one-client rounds")
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients")
    parser.add_argument("--requests", type=int, default=4, help="requests per client under load")
    parser.add_argument("--format", choices=("b64_json", "url"), default="b64_json")
    parser.add_argument("--n", type=int, default=1, help="images per one-client request")
    parser.add_argument("--keep", action="store_true", help="keep the work dir and log")
    args = parser.parse_args()
    if args.rounds < 1 or args.clients < 1 or args.requests < 1 or not 1 <= args.n <= 10:
        parser.error("need --rounds, --clients, --requests >= 1 and --n from 1 to 10")
    return args


def main() -> None:
    sys.exit(asyncio.run(run(parse_args())))


if __name__ == "__main__":
    main()
