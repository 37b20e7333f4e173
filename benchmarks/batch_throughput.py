"""Batch throughput: 200 items from a 1 s provider with 10 % of them failing once.

The fake OpenAI (benchmarks/flaky_openai.py, a process of its own so its work never
competes with ours for the GIL) answers every image request after 1 s; the first
request of every 10th item fails, in turn with a 429 with `Retry-After: 1` (answered at
once), a 500 (after the second of work) and a timeout (held longer than the client's
--client-timeout, 3 s here, so the client gives up and sends it again). The batch runs
through the engine's own API, as the app runs it: a BatchStore row with 200 items on a
real database (SQLite, or a scratch PostgreSQL database with --db postgres), then
`BatchRunner.start` and `wait`, with the OpenAI backend at provider concurrency 8 (its
gate, pipelines/provider_limits.py, shared by every item: one 429 pauses them all), each
attempt reserved and settled in the ledger and each image stored (256×256 images by
default, --image-side, so PNG bytes do not drown the figures; the size asked and billed
is 1024x1024).

    .venv/bin/python benchmarks/batch_throughput.py [--items 200 --concurrency 8
        --latency 1.0 --fail-every 10 --client-timeout 3 --db sqlite|postgres|both]

Figures: wall time from start to the batch's end; the ideal with retries, which is the
provider's own time spread over the slots (each answered request, image or 500, holds a
slot for the latency, each timeout for the client's timeout, a 429 for nothing) plus the
Retry-After pauses that the provider asked for and that stop every request from
starting; beside it the same count with every request at the latency, and the ideal
without failures (ceil(200 / 8) × 1 s = 25 s); and where the rest went: the provider
gate's pauses, the successful attempts' mean span (reserve, request, store, settle)
and how full the 8 slots were. Target: wall <= 1.15 × the ideal with retries. Also
checked: every item ended done, or failed with a reason; the ledger's settled total
equals the cost of the successful provider calls (their reported usage priced with the
app's price table) and the items' recorded cost, with nothing left reserved. Exit
status 1 when any of it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.turn_load import Postgres, clean_env  # noqa: E402
from core.logging_setup import configure_logging  # noqa: E402
from memory.batches import BatchRecord, BatchStore, NewBatchItem  # noqa: E402
from memory.db import create_engine, migrate, session_factory  # noqa: E402
from memory.images import ImageStore  # noqa: E402
from memory.ledger import Ledger, OperatorLimits  # noqa: E402
from memory.media_store import MediaStore  # noqa: E402
from memory.models import Image, LedgerEntry, Thread  # noqa: E402
from memory.users import UserStore  # noqa: E402
from pipelines import provider_limits  # noqa: E402
from pipelines.catalogue.pricing import PriceTable  # noqa: E402
from pipelines.images.openai_images import OpenAIImages  # noqa: E402
from pipelines.images.registry import BackendRegistry  # noqa: E402
from tests.fakes.server_process import ServerProcess  # noqa: E402
from tools.batch_runner import BatchRunner, BatchSpec  # noqa: E402
from tools.context import QuietPort, Services, ToolContext, Turn  # noqa: E402

MODEL = "gpt-image-2"
SIZE = "1024x1024"
QUALITY = "low"
API_KEY = "sk-bench-not-a-real-key"
TARGET_RATIO = 1.15
POSTGRES_URL = os.environ.get(
    "ATELIER_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
# The label of item i; the fake plans its failures from the digits (flaky_openai.py).
PROMPT = "a crayon drawing of one {label}, centred on a plain white background ({run})"


def label(i: int) -> str:
    return f"obj-{i:03d}"


class FakeProcess(ServerProcess):
    """benchmarks/flaky_openai.py in a process of its own, with none of our settings."""

    def __init__(self, *options: str) -> None:
        super().__init__("benchmarks.flaky_openai", *options, env=clean_env())
        self.root = self.base_url.removesuffix("/v1")

    def outcomes(self) -> list[dict[str, Any]]:
        """Every image request so far: prompt, outcome (ok/429/500/timeout) and usage."""
        return httpx.get(f"{self.root}/_fake/outcomes", timeout=30).json()


def openai_backend(base_url: str, timeout_s: float) -> OpenAIImages:
    """The app's OpenAI backend with its default retries (ATELIER_MAX_RETRIES, 2)."""
    return OpenAIImages(API_KEY, MODEL, base_url=base_url, timeout_s=timeout_s, max_retries=2)


@dataclass
class World:
    """One database with one user and one conversation, and the engine over it."""

    engine: Any
    user_id: str
    thread_id: str
    services: Services
    store: BatchStore
    runner: BatchRunner
    prices: PriceTable

    async def close(self) -> None:
        await self.runner.shutdown()
        await self.engine.dispose()


async def open_world(url: str, media_dir: Path, backend: OpenAIImages) -> World:
    """A migrated database with an account and a conversation; the stores, the ledger,
    the price table and a BatchRunner over them, as the app builds them."""
    engine = create_engine(url)
    await migrate(engine)
    account = await UserStore(session_factory(engine)).add("bench", "password-123")
    thread_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(insert(Thread).values(id=thread_id, user_id=account.id, name="Bench"))
    prices = PriceTable.load()
    services = Services(
        backends=BackendRegistry({"openai": backend}),
        images=ImageStore(engine, MediaStore(media_dir)),
        prices=prices,
        ledger=Ledger(engine),
        operator_limits=OperatorLimits(confirm_above_usd=Decimal("100000")),
    )
    store = BatchStore(engine)
    runner = BatchRunner(services, store, instance_id=lambda: None)
    return World(engine, account.id, thread_id, services, store, runner, prices)


def batch_spec() -> dict[str, Any]:
    """The spec stored with the batch: the OpenAI backend, no quality checks, the
    runner's retries (2 after a provider error)."""
    return BatchSpec(backend="openai", model=MODEL, size=SIZE, quality=QUALITY).to_dict()


async def run_batch(world: World, labels: Sequence[str], run: str) -> tuple[BatchRecord, float]:
    """Create the batch (one per call; `run` makes its prompts unique) and run it to its
    end through BatchRunner.start and wait; returns the batch and the wall seconds."""
    items = [
        NewBatchItem(label=name, prompt_sent=PROMPT.format(label=name, run=run)) for name in labels
    ]
    each = world.prices.estimate("openai", MODEL, quality=QUALITY, size=SIZE).usd
    batch = await world.store.create(
        user_id=world.user_id,
        thread_id=world.thread_id,
        title=f"Benchmark {run}",
        spec=batch_spec(),
        items=items,
        estimate_usd=each * len(items),
        instance_id=None,
    )
    ctx = ToolContext(
        services=world.services,
        turn=Turn(user_id=world.user_id, thread_id=world.thread_id),
        port=QuietPort(),
    )
    started = time.perf_counter()
    await world.runner.start(ctx, batch, None)
    await world.runner.wait(batch.id)
    return batch, time.perf_counter() - started


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    db: str
    wall_s: float
    requests: Counter[str]  # outcome -> count, this batch's requests at the fake
    items: Counter[str]  # status -> count
    failed: list[tuple[str, str]]  # (label, reason)
    settled_usd: Decimal
    settled_count: int
    reserved: int
    released: int
    calls_usd: Decimal  # the successful calls' reported usage, priced
    items_usd: Decimal
    images: int
    peak: int
    paused_s: list[float]  # the provider gate's pauses (429s), one entry per pause
    attempts_s: list[float]  # each ok attempt's span: reserve, request, store, settle
    tail_s: float  # from the last attempt's end to `wait` returning (contact sheet, summary)
    problems: list[str] = field(default_factory=list)

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


async def measure(
    db: str, url: str, work: Path, fake: FakeProcess, args: argparse.Namespace
) -> Result:
    backend = openai_backend(fake.base_url, args.client_timeout)
    world = await open_world(url, work / f"media-{db}", backend)
    try:
        labels = [label(i) for i in range(args.items)]
        before = len(fake.outcomes())
        provider_limits.configure({"openai": args.concurrency})
        gate = provider_limits.gate("openai")
        gate.peak, gate.pauses = 0, []
        batch, wall_s = await run_batch(world, labels, db)
        ended = datetime.now(UTC)
        outcomes = [o for o in fake.outcomes()[before:] if f"({db})" in o["prompt"]]
        items = await world.store.items(batch.id, world.user_id)
        result = Result(
            db=db,
            wall_s=wall_s,
            requests=Counter(o["outcome"] for o in outcomes),
            items=Counter(item.status for item in items),
            failed=[(item.label, item.error or "") for item in items if item.status == "failed"],
            calls_usd=sum(
                (
                    world.prices.actual("openai", MODEL, usage=o["usage"]).usd
                    for o in outcomes
                    if o["outcome"] == "ok"
                ),
                Decimal(0),
            ),
            items_usd=sum((Decimal(str(item.cost_usd)) for item in items), Decimal(0)),
            peak=gate.peak,
            paused_s=[until - since for since, until in gate.pauses],
            attempts_s=[
                attempt_seconds(attempt)
                for item in items
                for attempt in item.attempts
                if attempt["outcome"] == "ok"
            ],
            tail_s=(ended - last_attempt_end(items)).total_seconds(),
            **await ledger_figures(world.engine, batch.id),
        )
        result.problems += [
            f"{name}: failed without a reason" for name, reason in result.failed if not reason
        ]
        return result
    finally:
        await world.close()


def attempt_seconds(attempt: dict[str, Any]) -> float:
    started = datetime.fromisoformat(attempt["started_at"])
    return (datetime.fromisoformat(attempt["ended_at"]) - started).total_seconds()


def last_attempt_end(items: Sequence[Any]) -> datetime:
    ends = [datetime.fromisoformat(a["ended_at"]) for item in items for a in item.attempts]
    return max(ends, default=datetime.now(UTC))


async def ledger_figures(engine: Any, batch_id: str) -> dict[str, Any]:
    """Settled total and count, open and released reservations, stored images."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(LedgerEntry.status, LedgerEntry.actual_usd))).all()
        images = (await conn.execute(select(Image.id).where(Image.batch_id == batch_id))).all()
    settled = [Decimal(str(usd or 0)) for status, usd in rows if status == "settled"]
    statuses = Counter(status for status, _ in rows)
    return {
        "settled_usd": sum(settled, Decimal(0)),
        "settled_count": len(settled),
        "reserved": statuses["reserved"],
        "released": statuses["released"],
        "images": len(images),
    }


# --------------------------------------------------------------------------- report


def report(result: Result, args: argparse.Namespace) -> list[tuple[str, bool]]:
    # The provider's own time, spread over the slots: an answered request (image or
    # 500) holds a slot for the latency, a timeout for the client's timeout, a 429 no
    # time (it is answered at once); and the shared pauses its Retry-After asks for,
    # during which no request may start. Nothing the app does can beat this.
    held = result.total_requests - result.requests["timeout"] - result.requests["429"]
    slot_s = held * args.latency + result.requests["timeout"] * args.client_timeout
    ideal = math.ceil(slot_s / args.concurrency / args.latency) * args.latency
    ideal += sum(result.paused_s)
    # Pauses are counted whole: a 1 s pause among 1 s requests lets nearly every slot
    # drain. The strict lower bound, as if no slot ever drained, is printed beside it.
    strict = ideal - sum(result.paused_s)
    naive = math.ceil(result.total_requests / args.concurrency) * args.latency
    clean = math.ceil(args.items / args.concurrency) * args.latency
    ratio = result.wall_s / ideal
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.requests.items()))
    print(
        f"{result.db}: {args.items} items in {result.wall_s:.2f} s; "
        f"{result.total_requests} provider requests ({kinds}); at most {result.peak} at once; "
        f"the provider gate paused {len(result.paused_s)} times, {sum(result.paused_s):.2f} s "
        "in all (no request starts meanwhile)"
    )
    print(
        f"  ideal with retries: ceil({slot_s:g} provider-seconds / {args.concurrency}) + "
        f"{sum(result.paused_s):.2f} s of Retry-After pauses = {ideal:.2f} s (ratio "
        f"{ratio:.3f}); without the pauses {strict:g} s (ratio {result.wall_s / strict:.3f}); "
        f"counting every request as {args.latency:g} s, ceil("
        f"{result.total_requests}/{args.concurrency}) x {args.latency:g} s = {naive:g} s "
        f"(ratio {result.wall_s / naive:.3f}); without failures ceil({args.items}/"
        f"{args.concurrency}) x {args.latency:g} s = {clean:g} s (ratio "
        f"{result.wall_s / clean:.3f})"
    )
    print(
        f"  items: {dict(result.items)}; images stored {result.images}; ledger: "
        f"{result.settled_count} settled ${result.settled_usd}, {result.released} released, "
        f"{result.reserved} reserved; successful calls ${result.calls_usd}; "
        f"items' cost ${result.items_usd}"
    )
    if result.attempts_s:
        busy = sum(result.attempts_s) / (args.concurrency * result.wall_s)
        print(
            f"  successful attempts took {statistics.mean(result.attempts_s):.3f} s on average "
            f"(median {statistics.median(result.attempts_s):.3f} s; the request alone "
            f"{args.latency:g} s); all of them filled {busy:.0%} of {args.concurrency} slots "
            f"over the wall time; the end (contact sheet, summary) took {result.tail_s:.2f} s"
        )
    for name, reason in result.failed[:10]:
        print(f"  failed {name}: {reason}")
    for problem in result.problems:
        print(f"  PROBLEM: {problem}")
    done = result.items["done"]
    accounted = done + len(result.failed) == args.items and not result.problems
    money_ok = (
        result.settled_usd == result.calls_usd == result.items_usd
        and result.reserved == 0
        and result.images == result.requests["ok"] == done
    )
    return [
        (
            f"{result.db} wall {result.wall_s:.2f} s <= {TARGET_RATIO} x the ideal {ideal:.2f} s "
            f"(ratio {ratio:.3f})",
            ratio <= TARGET_RATIO,
        ),
        (
            f"{result.db} every item accounted for: {done} done, {len(result.failed)} failed "
            "with a reason, none left pending or running",
            accounted,
        ),
        (
            f"{result.db} ledger settled ${result.settled_usd} == successful calls "
            f"${result.calls_usd} == items' cost ${result.items_usd}; {result.reserved} left "
            f"reserved; {result.images} images for {result.requests['ok']} successful calls",
            money_ok,
        ),
    ]


async def run(args: argparse.Namespace) -> int:
    print(
        f"Batch throughput: {args.items} items of {MODEL} at provider concurrency "
        f"{args.concurrency}, fake OpenAI with {args.latency:g} s latency; every "
        f"{args.fail_every}th item's first request fails (429 Retry-After 1 s / 500 / "
        f"timeout past the client's {args.client_timeout:g} s), load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    options = ["--latency", str(args.latency), "--fail-every", str(args.fail_every)]
    options += ["--hold", str(args.client_timeout + 2), "--image-side", str(args.image_side)]
    fake = FakeProcess(*options)
    postgres = Postgres(args.postgres_url)
    checks: list[tuple[str, bool]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="atelier-bench-batch-") as tmp:
            for db in args.dbs:
                if db == "sqlite":
                    url = f"sqlite+aiosqlite:///{Path(tmp) / 'batch.db'}"
                else:
                    url = postgres.url(await postgres.create())
                result = await measure(db, url, Path(tmp), fake, args)
                checks += report(result, args)
    finally:
        fake.close()
        await postgres.drop_all()
    print("Targets:")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="the provider's limit")
    parser.add_argument("--latency", type=float, default=1.0, help="fake's delay, seconds")
    parser.add_argument("--fail-every", type=int, default=10, help="1 item in N fails once")
    parser.add_argument("--client-timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--image-side", type=int, default=256, help="pixels of the images")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="admin database")
    args = parser.parse_args(argv)
    if args.items < 1 or args.concurrency < 1 or args.latency <= 0 or args.fail_every < 0:
        parser.error("need --items >= 1, --concurrency >= 1, --latency > 0, --fail-every >= 0")
    args.dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    return args


def main() -> None:
    args = parse_args()
    configure_logging(level="warning")  # an info line per request would drown the figures
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
