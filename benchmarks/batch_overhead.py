"""Batch overhead: the app's CPU per item of a 1,000-item batch, against the bare client.

The fake OpenAI (benchmarks/flaky_openai.py) runs in a process of its own, answering at
once with tiny 8×8 images, so its CPU is not ours and nothing waits on a provider. In
this process, measured with `time.process_time` (every thread of it: the event loop,
aiosqlite's thread, the file writes):

- baseline: the same 1,000 image requests made directly with the `openai` client
  (AsyncOpenAI, at the same concurrency, each answer's image decoded): what any caller
  pays for the calls themselves;
- batch: a batch of 1,000 items through the engine's API (a BatchStore row and
  `BatchRunner.start` + `wait`, code shared with benchmarks/batch_throughput.py): per
  item, the plan, a ledger reservation and settlement, the request through the
  provider's gate, the image stored with its lineage and its parameters in the PNG, the
  item's attempt and status; no quality checks.

Both run once untimed first (imports, connections), then baseline, batch, baseline; the
baseline counted is the mean of its two runs.

    .venv/bin/python benchmarks/batch_overhead.py [--items 1000 --concurrency 8
        --db sqlite|postgres]

Target: (batch CPU − baseline CPU) / items < 15 ms. On PostgreSQL the database server's
own CPU is another process and is not counted (on SQLite all of it is ours). Exit
status 1 when the target is missed or an item did not end done.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.batch_throughput import (  # noqa: E402
    API_KEY,
    MODEL,
    POSTGRES_URL,
    PROMPT,
    QUALITY,
    SIZE,
    FakeProcess,
    World,
    label,
    open_world,
    openai_backend,
    run_batch,
)
from benchmarks.turn_load import Postgres  # noqa: E402
from core.logging_setup import configure_logging  # noqa: E402
from pipelines import provider_limits  # noqa: E402

TARGET_MS = 15.0
WARM_UP = 20


async def direct_calls(base_url: str, prompts: list[str], concurrency: int) -> None:
    """The requests without the app: the openai client, `concurrency` at a time."""
    import openai

    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=base_url, timeout=60, max_retries=2)
    slots = asyncio.Semaphore(concurrency)

    async def one(prompt: str) -> None:
        async with slots:
            answer = await client.images.generate(
                model=MODEL, prompt=prompt, size=SIZE, quality=QUALITY, n=1, output_format="png"
            )
            base64.b64decode(answer.data[0].b64_json or "")

    try:
        await asyncio.gather(*(one(prompt) for prompt in prompts))
    finally:
        await client.close()


def prompts(count: int, run: str) -> list[str]:
    return [PROMPT.format(label=label(i), run=run) for i in range(count)]


async def cpu_of_baseline(base_url: str, count: int, concurrency: int, run: str) -> float:
    started = time.process_time()
    await direct_calls(base_url, prompts(count, run), concurrency)
    return time.process_time() - started


async def cpu_of_batch(world: World, count: int, run: str) -> tuple[float, float, Counter[str]]:
    """(CPU seconds, wall seconds, item statuses) of one batch of `count` items."""
    started = time.process_time()
    batch, wall_s = await run_batch(world, [label(i) for i in range(count)], run)
    cpu_s = time.process_time() - started
    items = await world.store.items(batch.id, world.user_id)
    return cpu_s, wall_s, Counter(item.status for item in items)


async def run(args: argparse.Namespace) -> int:
    print(
        f"Batch overhead: {args.items} tiny items at concurrency {args.concurrency} on "
        f"{args.db}, fake OpenAI in its own process answering at once; load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        flush=True,
    )
    provider_limits.configure({"openai": args.concurrency})
    fake = FakeProcess("--image-side", "8")
    backend = openai_backend(fake.base_url, 60.0)
    postgres = Postgres(args.postgres_url)
    try:
        with tempfile.TemporaryDirectory(prefix="atelier-bench-overhead-") as tmp:
            if args.db == "sqlite":
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'batch.db'}"
            else:
                url = postgres.url(await postgres.create())
            world = await open_world(url, Path(tmp) / "media", backend)
            try:
                await cpu_of_baseline(fake.base_url, WARM_UP, args.concurrency, "warm-up direct")
                await cpu_of_batch(world, WARM_UP, "warm-up batch")
                first = await cpu_of_baseline(fake.base_url, args.items, args.concurrency, "b1")
                batch_cpu, wall_s, statuses = await cpu_of_batch(world, args.items, "batch")
                second = await cpu_of_baseline(fake.base_url, args.items, args.concurrency, "b2")
            finally:
                await world.close()
    finally:
        fake.close()
        await postgres.drop_all()
    baseline = (first + second) / 2
    per_item_ms = (batch_cpu - baseline) / args.items * 1000
    print(
        f"baseline (openai client alone): {first:.2f} s and {second:.2f} s CPU, "
        f"{baseline / args.items * 1000:.2f} ms per request"
    )
    print(
        f"batch: {batch_cpu:.2f} s CPU in {wall_s:.2f} s wall, "
        f"{batch_cpu / args.items * 1000:.2f} ms per item; items {dict(statuses)}"
    )
    note = "" if args.db == "sqlite" else " (PostgreSQL's own CPU not counted)"
    checks = [
        (
            f"{args.db} app overhead ({batch_cpu:.2f} - {baseline:.2f}) s / {args.items} = "
            f"{per_item_ms:.2f} ms CPU per item < {TARGET_MS:g} ms{note}",
            per_item_ms < TARGET_MS,
        ),
        (
            f"{args.db} every item done: {statuses['done']} of {args.items}",
            statuses["done"] == args.items,
        ),
    ]
    print("Targets:")
    for text, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8, help="the provider's limit")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="admin database")
    args = parser.parse_args()
    if args.items < 1 or args.concurrency < 1:
        parser.error("need --items >= 1 and --concurrency >= 1")
    configure_logging(level="warning")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
