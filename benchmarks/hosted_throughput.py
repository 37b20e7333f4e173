"""Hosted throughput: 100 images in one request from one session, from a 1 s provider.

The fake Replicate API runs as a separate process (so its work never competes with ours
for the GIL); it answers every request after a fixed latency (1 s), and answers a
prediction's create already finished with its image inline (`--finish-on-create`, as
Replicate's sync mode does), so each image is exactly one provider request of 1 s. The
model, flux-1.1-pro, makes one image per request. One `generate_image` call for all of
them runs through the real tool path: one estimate and one reservation in the ledger,
the provider's gate (pipelines/provider_limits.py), every image stored with its cost in
a SQLite database, the reservation settled.

It runs twice in the same process: at provider concurrency 1 (the baseline: what the
requests cost one after another) and at the target concurrency.

    .venv/bin/python benchmarks/hosted_throughput.py [--images 100 --concurrency 8
        --latency 1.0]

Target: elapsed at the target concurrency <= 1.1x the ideal images / concurrency x
latency (100 / 8 x 1 s = 12.5 s). Exit status 1 when it is missed, or when an image is
missing, out of order or the ledger does not add up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.logging_setup import configure_logging  # noqa: E402
from memory.db import create_engine, migrate, session_factory  # noqa: E402
from memory.images import ImageStore  # noqa: E402
from memory.ledger import Ledger, OperatorLimits  # noqa: E402
from memory.media_store import MediaStore  # noqa: E402
from memory.models import LedgerEntry  # noqa: E402
from memory.users import UserStore  # noqa: E402
from pipelines import provider_limits  # noqa: E402
from pipelines.catalogue.pricing import PriceTable  # noqa: E402
from pipelines.downloads.fetch_policy import FetchPolicy  # noqa: E402
from pipelines.images.registry import BackendRegistry  # noqa: E402
from pipelines.images.replicate_images import ReplicateImages  # noqa: E402
from tests.fakes.replicate_server import DEFAULT_TOKEN  # noqa: E402
from tests.fakes.server_process import ReplicateServerProcess  # noqa: E402
from tests.tool_helpers import ChatRecorder, tool_context  # noqa: E402
from tools.context import GenerationDefaults  # noqa: E402
from tools.generate_image import generate_image  # noqa: E402

MODEL = "black-forest-labs/flux-1.1-pro"  # one image per request
PRICE = Decimal("0.04")  # its per-image row in pipelines/catalogue/prices.toml
TARGET_RATIO = 1.1
THREADS = ("6f1c2e3a-98f4-4b3c-9d55-2e0f0c7c1a11", "6f1c2e3a-98f4-4b3c-9d55-2e0f0c7c1a12")


async def one_run(
    args: argparse.Namespace,
    backend: ReplicateImages,
    data_dir: Path,
    concurrency: int,
    thread: str,
) -> tuple[float, list[str]]:
    """(elapsed seconds, problems) for one call of `args.images` at `concurrency`."""
    engine = create_engine(f"sqlite+aiosqlite:///{data_dir / f'c{concurrency}.db'}")
    await migrate(engine)
    account = await UserStore(session_factory(engine)).add("bench", "password-123")
    ctx = tool_context(
        thread_id=thread,
        user_id=account.id,
        backends=BackendRegistry({"replicate": backend}),
        images=ImageStore(engine, MediaStore(data_dir / f"media-{concurrency}")),
        defaults=GenerationDefaults(backend="replicate"),
        prices=PriceTable.load(),
        ledger=Ledger(engine),
        operator_limits=OperatorLimits(confirm_above_usd=Decimal("1000")),
        port=ChatRecorder(),
    )
    provider_limits.configure({"replicate": concurrency})
    started = time.perf_counter()
    _, artifact = await generate_image(
        ctx, "a heron at dawn", n=args.images, seed=1000, size="256x256"
    )
    elapsed = time.perf_counter() - started
    problems: list[str] = []
    seeds = [record.seed for record, _ in artifact.images]
    if seeds != list(range(1000, 1000 + args.images)):
        problems.append(f"images missing or out of request order: {len(seeds)} made")
    stored = await ctx.services.images.for_thread(thread, account.id, limit=args.images + 1)
    if [record.seed for record in stored] != seeds:
        problems.append("stored order is not request order")
    usage = await _ledger_rows(engine)
    expected = PRICE * args.images
    if usage != [("settled", expected)]:
        problems.append(f"ledger {usage}, expected one settled entry of {expected}")
    await engine.dispose()
    return elapsed, problems


async def _ledger_rows(engine: AsyncEngine) -> list[tuple[str, Decimal]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(LedgerEntry.status, LedgerEntry.actual_usd))).all()
    return [(status, Decimal(str(usd)).normalize()) for status, usd in rows]


async def run(args: argparse.Namespace) -> int:
    ideal = args.images / args.concurrency * args.latency
    baseline_ideal = args.images * args.latency
    print(
        f"Hosted throughput: {args.images} images of {MODEL} (one per request) in one "
        f"generate_image call, fake Replicate with {args.latency:g} s latency per request"
    )
    fake = ReplicateServerProcess(args.latency, "--output-mode", "data", "--finish-on-create")
    # One backend for both runs, as the app keeps one: its connections are made once.
    backend = ReplicateImages(
        DEFAULT_TOKEN,
        MODEL,
        base_url=fake.base_url,
        poll_interval_s=0.05,
        fetch_policy=FetchPolicy.from_setting(urlsplit(fake.base_url).netloc),
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base_s, base_problems = await one_run(args, backend, Path(tmp), 1, THREADS[0])
            print(
                f"baseline  concurrency 1: {base_s:7.2f} s  ideal {baseline_ideal:6.2f} s  "
                f"ratio {base_s / baseline_ideal:.3f}"
            )
            ours_s, problems = await one_run(args, backend, Path(tmp), args.concurrency, THREADS[1])
    finally:
        await backend.aclose()
        fake.close()
    ratio = ours_s / ideal
    ok = ratio <= TARGET_RATIO and not problems and not base_problems
    print(
        f"parallel  concurrency {args.concurrency}: {ours_s:7.2f} s  ideal {ideal:6.2f} s  "
        f"ratio {ratio:.3f}"
    )
    print(f"speed-up over the baseline: {base_s / ours_s:.2f}x")
    for problem in base_problems + problems:
        print(f"PROBLEM: {problem}")
    print(
        f"target <= {TARGET_RATIO}x the ideal {ideal:g} s: {'PASS' if ok else 'FAIL'} "
        f"(ratio {ratio:.3f})"
    )
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=1.0, help="fake's delay, seconds")
    args = parser.parse_args()
    if args.images < 1 or args.concurrency < 1 or args.latency <= 0:
        parser.error("need --images >= 1, --concurrency >= 1 and --latency > 0")
    configure_logging(level="warning")  # one info line per prediction would drown the figures
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
