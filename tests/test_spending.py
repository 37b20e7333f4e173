"""Paid actions through the real tools, ledger and price table, on SQLite and PostgreSQL.

The estimate is shown before the action, confirmation is asked above the threshold
(cancel runs and spends nothing), a hard limit refuses with the numbers, and twenty
concurrent requests against a budget that allows ten run exactly ten. OpenAI images
come from the fake server through the real client; their cost is what `usage` reports.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.errors import InvalidInput
from memory.curations import CurationStore
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import BudgetExceeded, Ledger, OperatorLimits
from memory.media_store import MediaStore
from memory.models import Image
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401, F811 - fixtures
from tests.test_tools import SeededBackend
from tests.tool_helpers import SEEDED_PRICE_FILE, ChatRecorder, ledger_entries, tool_context
from tools.context import GenerationDefaults
from tools.curate_images import curate_images
from tools.estimate_cost import estimate_cost
from tools.generate_image import generate_image
from tools.spending import Declined

THREAD = "5c1e2f3a-98f4-4b3c-9d55-2e0f0c7c1a11"
D = Decimal


@pytest.fixture
async def world(tmp_path: Path, fake_openai, engine):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("pat", "password-123")
    prices_file = tmp_path / "prices.toml"
    prices_file.write_text(SEEDED_PRICE_FILE)  # $0.10 an image
    seeded = SeededBackend()
    chat = ChatRecorder()
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry(
            {
                "seeded": seeded,
                "openai": OpenAIImages("sk-test", "gpt-image-1.5", fake_openai.base_url),
            }
        ),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="seeded"),
        prices=PriceTable.load(prices_file),
        ledger=Ledger(engine),
        curations=CurationStore(engine),
        operator_limits=OperatorLimits(confirm_above_usd=D("1.00")),
        port=chat,
    )
    yield ctx, chat, seeded, engine


async def _image_count(db) -> int:
    async with db.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(Image))


async def test_estimate_is_shown_then_the_reported_cost_is_settled(world, fake_openai):
    ctx, chat, _, db = world
    _, artifact = await generate_image(ctx, "a lantern", backend="openai", quality="low")
    [announced] = chat.announced
    assert announced.startswith("Estimated cost of 1 image with OpenAI gpt-image-1.5: $")
    assert chat.asked == []  # under the $1.00 threshold
    [entry] = await ledger_entries(db)
    record = artifact.images[0][0]
    assert (entry.status, entry.source, entry.what) == ("settled", "reported", "image")
    assert entry.image_id == record.id and entry.backend == "openai"
    assert D(str(entry.actual_usd)) == D(str(record.cost_usd)).quantize(D("0.000001"))
    assert record.parameters["cost"]["source"] == "reported"


async def test_cancel_at_the_confirmation_runs_nothing_and_spends_nothing(world):
    ctx, chat, seeded, db = world
    await ctx.services.ledger.set_budget(
        "user_day", ctx.turn.user_id, None, user_id=ctx.turn.user_id, confirm_above_usd=D("0.15")
    )
    chat.answer = False
    with pytest.raises(Declined, match=r"did not run and nothing was spent"):
        await generate_image(ctx, "a lantern", n=2)  # 2 × $0.10 > $0.15
    assert chat.asked and "$0.2000" in chat.asked[0]
    assert seeded.requests == [] and await _image_count(db) == 0
    assert await ledger_entries(db) == []
    # Confirm: it runs and the table price is settled.
    chat.answer = True
    _, artifact = await generate_image(ctx, "a lantern", n=2)
    assert len(artifact.images) == 2 and len(chat.asked) == 2
    [entry] = await ledger_entries(db)
    assert (entry.status, D(str(entry.actual_usd)), entry.source) == ("settled", D("0.2"), "table")
    # Under the threshold nothing is asked.
    await generate_image(ctx, "a lantern")
    assert len(chat.asked) == 2


async def test_the_hard_limit_refuses_with_the_numbers(world):
    ctx, chat, seeded, db = world
    await ctx.services.ledger.set_budget("thread", THREAD, D("0.25"), user_id=ctx.turn.user_id)
    await generate_image(ctx, "a lantern", n=2)
    with pytest.raises(BudgetExceeded) as refused:
        await generate_image(ctx, "a lantern", n=1)
    assert refused.value.message == (
        "This would go over the budget for this conversation: spent $0.20, reserved $0.00 "
        "for requests still running, this request $0.10, limit $0.25 (set by you)."
    )
    assert len(seeded.requests) == 1 and await _image_count(db) == 2


async def test_a_failed_action_gives_its_reservation_back(world, fake_openai):
    ctx, _, _, db = world
    fake_openai.fail_next("/images/generations", status=500, times=5)
    with pytest.raises(Exception):  # noqa: B017 - the backend's own error class
        await generate_image(ctx, "a lantern", backend="openai")
    [entry] = await ledger_entries(db)
    assert entry.status == "released" and entry.actual_usd is None


async def test_a_curation_is_one_question_and_one_reservation(world):
    ctx, chat, seeded, db = world
    chat.answer = True
    await ctx.services.ledger.set_budget(
        "user_day", ctx.turn.user_id, None, user_id=ctx.turn.user_id, confirm_above_usd=D("0.50")
    )
    await curate_images(ctx, "a red apple", n=6, keep=1)  # 2 batches of the 4-image limit
    assert len(seeded.requests) == 2 and len(chat.asked) == 1 and len(chat.announced) == 1
    assert "6 candidates" in chat.announced[0] and "$0.6000" in chat.announced[0]
    [entry] = await ledger_entries(db)
    assert (entry.what, entry.status, D(str(entry.actual_usd))) == (
        "curation",
        "settled",
        D("0.6"),
    )


async def test_twenty_concurrent_requests_against_a_budget_for_ten(world):
    ctx, _, seeded, db = world
    await ctx.services.ledger.set_budget("thread", THREAD, D("1.00"), user_id=ctx.turn.user_id)
    results = await asyncio.gather(
        *(generate_image(ctx, f"lantern {i}") for i in range(20)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(refused) == 10 and len(results) - len(refused) == 10, results
    assert len(seeded.requests) == 10 and await _image_count(db) == 10
    spent = sum(D(str(e.actual_usd)) for e in await ledger_entries(db) if e.status == "settled")
    assert spent == D("1.00")


async def test_estimate_cost_equals_the_table_and_spends_nothing(world):
    ctx, _, seeded, db = world
    text, _ = await estimate_cost(ctx, n=20, quality="high", size="1024x1024", backend="openai")
    row_price = ctx.services.prices.estimate(
        "openai", "gpt-image-1.5", quality="high", size="1024x1024"
    )
    assert f"${row_price.usd * 20:.4f}" in text  # 20 × the per-image row
    assert "20 × gpt-image-1.5 high 1024x1024" in text and "Nothing was made or spent" in text
    text, _ = await estimate_cost(ctx, n=20, quality="high", backend="openai")
    assert f"${row_price.usd * 20:.4f}" in text  # the model's default size, as a run
    with pytest.raises(InvalidInput, match="no quality 'ultra'"):
        await estimate_cost(ctx, quality="ultra", backend="openai")
    text, _ = await estimate_cost(ctx, n=3)  # the conversation's backend
    assert "$0.3000" in text and "Spent this conversation: $0.0000" in text
    text, _ = await estimate_cost(ctx, n=1, backend="replicate:black-forest-labs/flux-schnell")
    assert "$0.0030" in text  # priced without a Replicate token
    text, _ = await estimate_cost(ctx, n=2, backend="replicate:someone/unknown-model")
    assert "unknown" in text
    with pytest.raises(InvalidInput, match="n must be from 1 to 1000"):
        await estimate_cost(ctx, n=0)
    assert seeded.requests == [] and await ledger_entries(db) == []
