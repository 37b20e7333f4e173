"""Money: one way to show dollars, and per-image shares that add up to what was settled.

The shares are checked end to end: three images from a time-billed backend through the
real tool, price table and ledger (SQLite and PostgreSQL), rows read back.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from core import money
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.media_store import MediaStore
from memory.models import LedgerEntry
from memory.png_metadata import read_embedded
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    SizeRange,
    check_request,
)
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.tool_helpers import tool_context
from tools.context import GenerationDefaults
from tools.generate_image import generate_image

D = Decimal
THREAD = "3d6b1a52-98f4-4b3c-9d55-2e0f0c7c1a11"


@pytest.mark.parametrize(
    ("amount", "places", "shown"),
    [
        (D("0.133"), None, "$0.133"),
        (D("0.5"), None, "$0.50"),
        (D("0.000975"), None, "$0.000975"),
        (D("1E+1"), None, "$10.00"),
        (D("0.100000"), None, "$0.10"),
        (D("0.13325"), 4, "$0.1333"),  # half-up, as the price table rounds
        (D("4.22"), 4, "$4.2200"),
        (D("0.999"), 2, "$1.00"),
        ("0.030000", 4, "$0.0300"),  # as stored in JSON parameters
        (0, 0, "$0"),
        (D("100000"), 0, "$100000"),
        (D("-0.5"), 2, "-$0.50"),
    ],
)
def test_usd_shows_dollars_one_way(amount, places, shown):
    assert money.usd(amount, places) == shown


def test_usd_groups_thousands_when_asked():
    assert money.usd(D("100000"), 0, grouped=True) == "$100,000"
    assert money.usd(D("1234.5"), grouped=True) == "$1,234.50"


def test_usd_refuses_a_float():
    with pytest.raises(TypeError, match="Decimal"):
        money.usd(0.1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("total", "parts", "shares"),
    [
        (D("0.1"), 3, [D("0.033334"), D("0.033333"), D("0.033333")]),
        (D("0.02"), 3, [D("0.006666"), D("0.006667"), D("0.006667")]),
        (D("0.12"), 3, [D("0.04")] * 3),
        (D("0.000001"), 3, [D("0.000001"), D(0), D(0)]),
        # Half-up shares of 0.0000015 would leave the first below zero: rounded down.
        (D("0.000015"), 10, [D("0.000006"), *[D("0.000001")] * 9]),
    ],
)
def test_split_shares_sum_to_the_total_exactly(total, parts, shares):
    assert money.split(total, parts) == shares
    assert sum(shares) == total


class TimedBackend:
    """Billed by GPU time, which it reports (as Replicate's `metrics.predict_time`)."""

    id = "timed"
    label = "Timed"
    default_model = "toy-v1"
    edit_model = None

    def capabilities(self, model: str | None = None) -> Capabilities:
        return Capabilities(sizes=("64x64",), size_range=SizeRange(64, 64, 8), max_n=4, edit="none")

    def suggested_models(self) -> list[str]:
        return [self.default_model]

    async def generate(self, request: ImageRequest, progress=None) -> ImageResult:
        request = check_request(self, request)
        images = []
        for index in range(request.n):
            buffer = io.BytesIO()
            Image.new("RGB", (64, 64), (index * 40, 0, 0)).save(buffer, "PNG")
            images.append(GeneratedImage(buffer.getvalue(), "image/png", 64, 64, None))
        return ImageResult(
            images=images,
            backend=self.id,
            model=request.model,
            prompt_sent=request.prompt,
            parameters={},
            seed_honoured=False,
            metrics={"predict_time": 10},
        )


# 10 s at $0.001/s = $0.01 for the batch: three images do not share it evenly.
TIMED_PRICES = """
[[price]]
backend = "timed"
model = "toy-v1"
unit = "second"
amount_usd = 0.001
source = "test"
date = "2026-12-02"
"""


async def test_three_images_cost_exactly_what_the_ledger_settled(tmp_path: Path, engine):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("ada", "password-123")
    prices = tmp_path / "prices.toml"
    prices.write_text(TIMED_PRICES)
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"timed": TimedBackend()}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="timed"),
        prices=PriceTable.load(prices),
        ledger=Ledger(engine),
    )

    _, artifact = await generate_image(ctx, "three kites", n=3)

    async with engine.connect() as conn:
        [entry] = (await conn.execute(select(LedgerEntry))).all()
    assert entry.status == "settled" and entry.actual_usd == D("0.010000")
    images = ctx.services.images
    records = [await images.get(record.id, ctx.turn.user_id) for record, _ in artifact.images]
    shares = [record.cost_usd for record in records]
    assert shares == [D("0.003334"), D("0.003333"), D("0.003333")]
    assert sum(shares) == entry.actual_usd
    # The file keeps its share as a decimal string, as the JSON parameters keep the total.
    for (_, stored), share in zip(artifact.images, shares, strict=True):
        embedded = json.loads(read_embedded(stored)["atelier"])
        assert embedded["cost_usd"] == str(share)
        assert embedded["parameters"]["cost"]["usd"] == "0.010000"
