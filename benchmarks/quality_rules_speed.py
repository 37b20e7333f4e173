"""Quality rule checks: time of run_checks on one 1024x1024 picture, on one core.

The picture is realistic for the crayon use case: a crayon-like disc (ragged outline,
noisy waxy fill with paper showing through, crayon dust) on grainy white paper, which
passes every check, so every check runs to the end. It is timed three ways, interleaved,
`--runs` times each after warm-up calls:

- decode only: `open_image` on the PNG bytes (the baseline: what reading the file costs);
- checks on a decoded image: `run_checks(image)`, the cost of the rules themselves;
- checks on the PNG bytes: `run_checks(png)`, as curation calls it (decode included).

The process is pinned to one CPU and numpy's thread pools to one thread before numpy is
imported, so the figures are per core: curation scores 16 candidates on one worker.

    .venv/bin/python benchmarks/quality_rules_speed.py [--runs 50 --size 1024]

Target: median < 20 ms, both for the checks on a decoded image and for the checks on the
PNG bytes. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import os

# Before numpy is imported: one thread for every BLAS/OpenMP pool.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import argparse  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.image_decoding import open_image  # noqa: E402
from pipelines.scoring.quality_rules import run_checks  # noqa: E402

TARGET_MEDIAN_MS = 20.0
WARM_UP = 3


def crayon_picture(side: int, seed: int = 1) -> Image.Image:
    """A crayon-like red disc on grainy white paper (the same recipe as the tests)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    centre = side / 2
    theta = np.arctan2(yy - centre, xx - centre)
    ragged = 0.2 * side * (1 + 0.03 * np.sin(9 * theta) + 0.015 * np.sin(23 * theta + 1))
    inside = np.hypot(xx - centre, yy - centre) < ragged + rng.normal(0, 0.004 * side, xx.shape)
    strokes = np.sin((xx + yy) * (2 * np.pi / (0.012 * side)))
    gaps = (strokes > 0.75) & (rng.random(xx.shape) < 0.6)
    pixels = 255 - np.abs(rng.normal(0, 4, (side, side, 1))).repeat(3, axis=2)
    colour = np.array((214, 64, 48), np.float32)
    fill = colour + rng.normal(0, 22, (side, side, 1))
    crayoned = inside & ~gaps
    pixels[crayoned] = fill[crayoned]
    for _ in range(30):
        x, y = rng.integers(4, side - 4, size=2)
        pixels[y - 2 : y + 2, x - 2 : x + 2] = colour
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Milliseconds per call; the calls take turns so drift affects each alike."""
    for call in calls.values():
        for _ in range(WARM_UP):
            call()
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(runs):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            samples[label].append((time.perf_counter() - start) * 1000)
    return samples


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="side of the square picture")
    args = parser.parse_args()
    if args.runs < 1 or args.size < 64:
        parser.error("need --runs >= 1 and --size >= 64")

    picture = crayon_picture(args.size)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    png = buffer.getvalue()
    results = run_checks(png)
    failed = [r.name for r in results if not r.passed]
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else "all"
    print(
        f"Quality rules: {args.size}x{args.size} crayon picture, PNG {len(png) / 1024:.0f} KiB, "
        f"{args.runs} runs after {WARM_UP} warm-ups, CPUs {cpus}, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print("verdicts: " + ("passes every check" if not failed else f"FAILS {', '.join(failed)}"))

    samples = time_interleaved(
        {
            "decode only (open_image)": lambda: open_image(png),
            "run_checks(decoded image)": lambda: run_checks(picture),
            "run_checks(PNG bytes)": lambda: run_checks(png),
        },
        args.runs,
    )
    decode = statistics.median(samples["decode only (open_image)"])
    for label, values in samples.items():
        median = statistics.median(values)
        print(
            f"{label:<27} median={median:7.2f}ms  p95={p95(values):7.2f}ms  "
            f"x{median / decode:5.2f} of decoding"
        )
    ok = True
    for label in ("run_checks(decoded image)", "run_checks(PNG bytes)"):
        median = statistics.median(samples[label])
        passed = median < TARGET_MEDIAN_MS
        ok = ok and passed
        print(f"{label} median={median:.2f}ms  target <{TARGET_MEDIAN_MS:.0f}ms: {verdict(passed)}")
    sys.exit(0 if ok and not failed else 1)


if __name__ == "__main__":
    main()
