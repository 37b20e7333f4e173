"""Attack: run models without a price, so that budgets cannot count them (issue 12, #4).

Before the fix an unpriced model reserved $0: a user at the operator's day limit could
still run any unpriced Replicate model or unknown OpenAI model name, uncounted. Now the
operator chooses: `refuse` (nothing runs) or `reserve` a ceiling per output that is
confirmed, budgeted and recorded like a price (source "ceiling", never $0).

Every paid path is tried: images, curations, video and LoRA training on Replicate, with
the real `replicate` and `openai` clients talking to the fake servers on 127.0.0.1; the
assertions read the ledger back and check what the fake servers received.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core.errors import InvalidInput
from memory.curations import CurationStore
from memory.db import session_factory
from memory.images import ImageStore, NewImage
from memory.ledger import BudgetExceeded, Ledger, OperatorLimits
from memory.loras import LoraStore
from memory.media_store import MediaStore
from memory.models import Image
from memory.users import UserStore
from memory.videos import VideoStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.openai_images import OpenAIImages
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages
from pipelines.training.replicate_training import ReplicateLoraTrainer
from pipelines.video.replicate_video import ReplicateVideo
from pipelines.video.video_registry import VideoBackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.replicate_server import FakeReplicate
from tests.lora_fixtures import picture
from tests.replicate_fixtures import fetch_policy_for
from tests.tool_helpers import (
    ChatRecorder,
    ledger_entries,
    tool_context,
    training_jobs,
    with_services,
)
from tools.context import GenerationDefaults, ToolContext
from tools.curate_images import curate_images
from tools.estimate_cost import estimate_cost
from tools.generate_image import generate_image
from tools.generate_video import generate_video
from tools.spending import Declined
from tools.train_lora import train_lora

THREAD = "7d2a8c41-3b6e-4f0a-9c55-1e2f3a4b5c61"
D = Decimal
UNPRICED_MODEL = "mallory/unpriced-model"
CEILING = D("0.50")


@pytest.fixture
async def world(
    tmp_path: Path,
    engine: Any,  # noqa: F811
    fake_replicate: FakeReplicate,
    fake_openai: FakeOpenAI,
):
    """Mallory's conversation on a server whose operator allows $1.00 a day."""
    mallory = await UserStore(session_factory(engine)).add("mallory", "password-123")
    hosted = {
        "base_url": fake_replicate.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "fetch_policy": fetch_policy_for(fake_replicate),
    }
    token = fake_replicate.api_token or ""
    media = MediaStore(tmp_path / "media")
    chat = ChatRecorder()
    jobs = training_jobs(
        LoraStore(engine),
        tmp_path / "loras",
        replicate=ReplicateLoraTrainer(
            token, base_url=fake_replicate.base_url, poll_interval_s=0.01
        ),
        publish_every_s=0.05,
    )
    ctx = tool_context(
        thread_id=THREAD,
        user_id=mallory.id,
        backends=BackendRegistry(
            {
                "replicate": ReplicateImages(token, **hosted),
                "openai": OpenAIImages("sk-test", "gpt-image-1.5", fake_openai.base_url),
            }
        ),
        images=ImageStore(engine, media),
        defaults=GenerationDefaults(backend=f"replicate:{UNPRICED_MODEL}"),
        prices=PriceTable.load(),
        ledger=Ledger(engine),
        curations=CurationStore(engine),
        operator_limits=OperatorLimits(user_day_usd=D("1.00"), confirm_above_usd=D("5.00")),
        port=chat,
        videos=VideoStore(engine, media),
        video_backends=VideoBackendRegistry({"replicate": ReplicateVideo(token, **hosted)}),
        trainings=jobs,
    )
    yield ctx, chat, engine
    await jobs.stop_all()


def _policy(ctx: ToolContext, policy: str, **more: Any) -> ToolContext:
    limits = ctx.services.operator_limits or OperatorLimits()
    changed = OperatorLimits(**{**limits.__dict__, "unpriced_policy": policy, **more})
    return with_services(ctx, operator_limits=changed)


async def _image_count(db: Any) -> int:
    async with session_factory(db)() as session:
        return len((await session.scalars(select(Image.id))).all())


async def _spend(ctx: ToolContext, usd: str) -> None:
    """Earlier spending today, as a settled ledger entry."""
    assert ctx.services.ledger is not None
    held = await ctx.services.ledger.reserve(
        user_id=ctx.turn.user_id,
        thread_id=ctx.turn.thread_id,
        backend="openai",
        model="gpt-image-1.5",
        what="image",
        estimate_usd=D(usd),
    )
    await ctx.services.ledger.settle(
        held.id, user_id=ctx.turn.user_id, actual_usd=D(usd), source="table"
    )


async def _uploads(ctx: ToolContext, count: int) -> list[str]:
    ids = []
    for i in range(count):
        record, _ = await ctx.services.images.record(
            ctx.turn.thread_id,
            ctx.turn.user_id,
            NewImage(picture(i, (64, 64)), "image/png", 64, 64, "mine", "", "upload", "", {}),
        )
        ids.append(record.id)
    return ids


async def test_a_user_at_the_day_budget_cannot_run_an_unpriced_replicate_model(
    world, fake_replicate
):
    ctx, chat, db = world
    assert (
        ctx.services.prices is not None
        and ctx.services.prices.estimate("replicate", UNPRICED_MODEL).unpriced
    )
    await _spend(ctx, "0.80")  # $0.20 left: less than one output at the $0.50 ceiling
    with pytest.raises(BudgetExceeded, match=r"limit \$1\.00 \(set by the operator\)") as info:
        await generate_image(ctx, "a fox", backend=f"replicate:{UNPRICED_MODEL}")
    assert "this request $0.50" in info.value.message
    assert fake_replicate.requests == []  # nothing was sent to the provider
    assert [e.status for e in await ledger_entries(db)] == ["settled"]  # only the earlier spend
    assert await _image_count(db) == 0
    # The announcement said what it would cost against the budget, not "free".
    assert "up to $0.5000 reserved" in chat.announced[-1]


async def test_an_unknown_openai_model_name_counts_too(world, fake_openai):
    ctx, chat, db = world
    assert (
        ctx.services.prices is not None
        and ctx.services.prices.estimate("openai", "dall-e-9-test").unpriced
    )
    await _spend(ctx, "0.80")
    with pytest.raises(BudgetExceeded):
        await generate_image(ctx, "a fox", backend="openai:dall-e-9-test", n=2)
    # Under the limit, the ceiling still meets the confirmation threshold: Cancel spends nothing.
    ctx = _policy(ctx, "reserve", user_day_usd=None, confirm_above_usd=D("0.40"))
    chat.answer = False
    with pytest.raises(Declined):
        await generate_image(ctx, "a fox", backend="openai:dall-e-9-test")
    assert "estimated at $0.5000" in chat.asked[-1]
    assert fake_openai.requests_to("/images/generations") == []
    assert len(await ledger_entries(db)) == 1


async def test_reserve_charges_the_ceiling_per_output_never_zero(world, fake_replicate):
    ctx, chat, db = world
    _, artifact = await generate_image(ctx, "a fox", backend=f"replicate:{UNPRICED_MODEL}", n=2)
    assert len(artifact.images) == 2
    [entry] = await ledger_entries(db)
    assert (entry.status, entry.source, entry.model) == ("settled", "ceiling", UNPRICED_MODEL)
    assert D(str(entry.estimate_usd)) == D(str(entry.actual_usd)) == 2 * CEILING
    # The day's usage counts it: one more output would pass the $1.00 limit.
    with pytest.raises(BudgetExceeded):
        await generate_image(ctx, "a fox", backend=f"replicate:{UNPRICED_MODEL}")
    assert len(fake_replicate.creates()) == 1
    # The report counts it as spent at the ceiling, not as free or unknown.
    assert ctx.services.ledger is not None
    [row] = await ctx.services.ledger.report(ctx.turn.user_id)
    assert (row.usd, row.at_ceiling, row.unpriced) == (2 * CEILING, 1, 0)


async def test_every_paid_path_is_counted_at_the_ceiling(world, fake_replicate):
    """Images, a curation, a video and a Replicate training, on a table with no prices."""
    ctx, chat, db = world
    ctx = with_services(ctx, prices=PriceTable([], []))
    ctx = _policy(ctx, "reserve", user_day_usd=D("100"), unpriced_reserve_usd=D("0.25"))
    await curate_images(ctx, "a fox", n=3)
    [source] = await _uploads(ctx, 1)
    await generate_video(ctx, "it runs", image_id=source, backend="replicate:minimax/video-01")
    await train_lora(
        ctx,
        "foxes",
        backend="replicate",
        steps=300,
        resolution=64,
        licence="own work",
        destination="mallory/foxes",
        images=await _uploads(ctx, 2),
    )
    jobs = ctx.services.trainings
    assert jobs is not None
    [record] = jobs.running(ctx.turn.user_id)
    await asyncio.wait_for(jobs.wait(record.id), 60)
    entries = {e.what: e for e in await ledger_entries(db)}
    assert set(entries) == {"curation", "video", "training"}
    expected = {"curation": D("0.75"), "video": D("0.25"), "training": D("0.25")}
    for what, usd in expected.items():
        entry = entries[what]
        assert (entry.status, entry.source) == ("settled", "ceiling"), what
        assert D(str(entry.estimate_usd)) == D(str(entry.actual_usd)) == usd, what
    assert "unknown (no price for it, up to $0.2500 reserved)" in chat.asked[-1]


async def test_refuse_policy_runs_nothing_on_any_path(world, fake_replicate, fake_openai):
    ctx, chat, db = world
    ctx = with_services(ctx, prices=PriceTable([], []))
    ctx = _policy(ctx, "refuse")
    [source] = await _uploads(ctx, 1)
    attempts = [
        generate_image(ctx, "a fox", backend=f"replicate:{UNPRICED_MODEL}"),
        generate_image(ctx, "a fox", backend="openai:dall-e-9-test"),
        curate_images(ctx, "a fox", n=3),
        generate_video(ctx, "it runs", image_id=source, backend="replicate:minimax/video-01"),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidInput, match="ATELIER_PRICES_FILE") as info:
            await attempt
        assert "has no price" in info.value.message and "Nothing ran" in info.value.message
    with pytest.raises(InvalidInput, match="ostris/flux-dev-lora-trainer has no price"):
        await train_lora(
            ctx,
            "foxes",
            backend="replicate",
            steps=300,
            licence="own work",
            destination="mallory/foxes",
            images=await _uploads(ctx, 2),
        )
    assert fake_replicate.requests == [] and fake_openai.requests_to("/images") == []
    assert await ledger_entries(db) == [] and chat.asked == []
    assert await _image_count(db) == 3  # only the uploads
    # Asking what it would cost says so, and spends nothing.
    text, _ = await estimate_cost(ctx, n=2, backend=f"replicate:{UNPRICED_MODEL}")
    assert "not run on this server" in text and await ledger_entries(db) == []
