"""Replicate overhead: ReplicateImages against raw httpx doing the same calls.

The fake Replicate API runs as a separate process (so its work never competes with ours
for the GIL) with a fixed delay before every answer and a fixed number of polls per
prediction. Each image is then made two ways, alternating so drift hits both alike:

- ours: `ReplicateImages.generate` (the official client's predictions API, progress,
  retry bookkeeping, download, and the check that the bytes really are an image);
- baseline: raw `httpx` doing the same create → poll every interval → download.

The same prompt and seed throughout (after a warm-up) let the fake serve cached pictures,
so both sides wait for exactly the same server. Overhead = ours − baseline per image.

    .venv/bin/python benchmarks/replicate_overhead.py [--images 30 --poll-interval 0.05
        --latency 0.005 --processing-polls 3]

Target: overhead < 20 ms per image beyond the fake's latency and the poll interval
(i.e. beyond the baseline). Exit status 1 when it is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.logging_setup import configure_logging  # noqa: E402
from pipelines.downloads.fetch_policy import FetchPolicy  # noqa: E402
from pipelines.images.base import ImageRequest  # noqa: E402
from pipelines.images.replicate_images import ReplicateImages  # noqa: E402
from pipelines.replicate_api.replicate_client import FIRST_POLL_S  # noqa: E402
from tests.fakes.replicate_server import DEFAULT_TOKEN  # noqa: E402
from tests.fakes.server_process import ReplicateServerProcess  # noqa: E402

MODEL = "black-forest-labs/flux-schnell"
PROMPT = "a heron standing in shallow water at dawn"
SEED = 1234
TARGET_MS = 20.0


@dataclass
class Timing:
    label: str
    samples_ms: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def baseline(client: httpx.AsyncClient, poll_interval_s: float) -> Callable[[], Awaitable[bytes]]:
    """The same calls as the backend makes, with nothing else around them."""
    body = {
        "input": {
            "prompt": PROMPT,
            "aspect_ratio": "1:1",
            "num_outputs": 1,
            "seed": SEED,
            "output_format": "png",
        }
    }

    async def make_one() -> bytes:
        response = await client.post(f"/v1/models/{MODEL}/predictions", json=body)
        response.raise_for_status()
        prediction = response.json()
        delay = min(poll_interval_s, FIRST_POLL_S)
        while prediction["status"] not in ("succeeded", "failed", "canceled"):
            await asyncio.sleep(delay)
            delay = poll_interval_s
            response = await client.get(f"/v1/predictions/{prediction['id']}")
            response.raise_for_status()
            prediction = response.json()
        download = await client.get(prediction["output"][0])
        download.raise_for_status()
        return download.content

    return make_one


async def run(args: argparse.Namespace) -> int:
    polls = args.processing_polls + 1  # processing polls, then the one that sees success
    floor_ms = 1000 * (args.latency * (polls + 2) + args.poll_interval * polls)
    print(
        f"Replicate overhead: {args.images} images of {MODEL}, fake latency "
        f"{args.latency * 1000:.0f} ms per request, {args.processing_polls} processing polls, "
        f"poll interval {args.poll_interval * 1000:.0f} ms "
        f"(nominal floor {floor_ms:.0f} ms per image: {polls + 2} requests + {polls} sleeps)"
    )
    fake = ReplicateServerProcess(args.latency, "--processing-polls", str(args.processing_polls))
    headers = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
    backend = ReplicateImages(
        DEFAULT_TOKEN,
        MODEL,
        base_url=fake.base_url,
        poll_interval_s=args.poll_interval,
        # The fake serves its files from 127.0.0.1, which the downloader refuses unless told.
        fetch_policy=FetchPolicy.from_setting(urlsplit(fake.base_url).netloc),
    )
    request = ImageRequest(PROMPT, seed=SEED)
    try:
        async with httpx.AsyncClient(base_url=fake.base_url, headers=headers) as client:
            raw = baseline(client, args.poll_interval)

            async def ours() -> bytes:
                return (await backend.generate(request)).images[0].data

            sides: list[tuple[Timing, Callable[[], Awaitable[bytes]]]] = [
                (Timing("ours  ReplicateImages.generate", []), ours),
                (Timing("base  raw httpx create/poll/get", []), raw),
            ]
            for _, make_one in sides:  # warm-up: connections, imports, the fake's cache
                await make_one()
            outputs: set[bytes] = set()
            for index in range(args.images):
                order = sides if index % 2 == 0 else sides[::-1]
                for timing, make_one in order:
                    started = time.perf_counter()
                    outputs.add(await make_one())
                    timing.samples_ms.append((time.perf_counter() - started) * 1000)
            await backend.aclose()
    finally:
        fake.close()

    (ours_timing, _), (base_timing, _) = sides
    for timing in (ours_timing, base_timing):
        print(
            f"{timing.label:<34} mean={timing.mean:7.1f}ms  median={timing.median:7.1f}ms  "
            f"p95={timing.p95:7.1f}ms"
        )
    print(f"same image from both sides: {'yes' if len(outputs) == 1 else 'NO'}")
    overhead_mean = ours_timing.mean - base_timing.mean
    overhead_median = ours_timing.median - base_timing.median
    print(
        f"baseline beyond the nominal floor (HTTP and the fake's own work): "
        f"{base_timing.mean - floor_ms:.1f} ms per image"
    )
    print(
        f"ours beyond the nominal floor: {ours_timing.mean - floor_ms:.1f} ms per image "
        "(informational)"
    )
    ok = overhead_mean < TARGET_MS and overhead_median < TARGET_MS
    print(
        f"overhead per image: mean {overhead_mean:.1f} ms, median {overhead_median:.1f} ms  "
        f"target < {TARGET_MS:.0f} ms beyond the fake's latency and poll interval: "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok and len(outputs) == 1 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds")
    parser.add_argument("--latency", type=float, default=0.005, help="fake's delay, seconds")
    parser.add_argument("--processing-polls", type=int, default=3)
    args = parser.parse_args()
    if args.images < 1 or args.poll_interval <= 0 or args.latency < 0:
        parser.error("need --images >= 1, --poll-interval > 0 and --latency >= 0")
    configure_logging(level="warning")  # one info line per prediction would drown the figures
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
