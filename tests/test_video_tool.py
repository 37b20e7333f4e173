"""generate_video with real backends, a real database, media store, prices and ledger.

Local clips come from the tiny random-weight SVD pipeline; hosted ones from the real
`replicate` client talking to the fake server, which also draws keyframes (flux-schnell)
for text-to-video on image-only models. Assertions read rows back: the videos table,
media claims, ledger entries, and the stored MP4 decoded with imageio-ffmpeg.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest
from sqlalchemy import func, select

from core.errors import BackendNotConfigured, InvalidInput, NotFound
from core.logging_setup import configure_logging
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.media_store import MediaStore
from memory.models import Image, LedgerEntry, Video
from memory.users import UserStore
from memory.videos import VideoStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages
from pipelines.video.local_video import LocalStableVideo
from pipelines.video.replicate_video import ReplicateVideo
from pipelines.video.video_registry import VideoBackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import fetch_policy_for
from tests.tool_helpers import ChatRecorder, tool_context, with_services
from tests.waiting import wait_until
from tools.context import GenerationDefaults, ToolContext
from tools.generate_image import generate_image
from tools.generate_video import generate_video

THREAD = "5b7f3f7e-1c0a-4f57-9a55-2e0f0c7c1b22"
SMALL = {"size": "32x32", "fps": 4, "seconds": 1.0, "steps": 2}  # tiny SVD, 4 frames


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    configure_logging()


class World:
    def __init__(
        self, ctx: ToolContext, database: Any, media: MediaStore, chat: ChatRecorder
    ) -> None:
        self.ctx, self.engine, self.media, self.chat = ctx, database, media, chat

    async def rows(self, model: type) -> list[Any]:
        async with session_factory(self.engine)() as session:
            return list((await session.scalars(select(model))).all())

    async def count(self, model: type) -> int:
        async with session_factory(self.engine)() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
async def world(
    tmp_path: Path,
    engine: Any,  # noqa: F811
    fake_replicate: FakeReplicate,
    tiny_svd_dir: Path,
) -> AsyncIterator[World]:
    """Eve's conversation: Replicate images, local SVD and Replicate video, priced."""
    users = UserStore(session_factory(engine))
    eve = await users.add("eve", "password-123")
    media = MediaStore(tmp_path / "media")
    hosted = {
        "base_url": fake_replicate.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "fetch_policy": fetch_policy_for(fake_replicate),
    }
    token = fake_replicate.api_token or ""
    images = ReplicateImages(token, **hosted)
    clips = ReplicateVideo(token, **hosted)
    local = LocalStableVideo(model=str(tiny_svd_dir), device="cpu")
    chat = ChatRecorder(answer=False, shows=True)  # a live chat that shows keyframes at once
    ctx = tool_context(
        thread_id=THREAD,
        user_id=eve.id,
        backends=BackendRegistry({"replicate": images}),
        images=ImageStore(engine, media),
        defaults=GenerationDefaults(backend="replicate"),
        prices=PriceTable.load(),
        ledger=Ledger(engine),
        videos=VideoStore(engine, media),
        video_backends=VideoBackendRegistry({"replicate": clips, "local": local}),
        port=chat,
    )
    world = World(ctx, engine, media, chat)
    yield world
    local.runner.shutdown()  # type: ignore[attr-defined]
    await images.aclose()
    await clips.aclose()


def frames_of(data: bytes, tmp_path: Path) -> tuple[tuple[int, int], int]:
    path = tmp_path / "stored.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return tuple(meta["size"]), sum(1 for _ in reader)


# --- Image-to-video ---------------------------------------------------------------------


async def test_animate_the_latest_image_locally_and_keep_its_lineage(world, tmp_path) -> None:
    ctx = world.ctx
    _, made = await generate_image(ctx, "a red fox in the snow")
    fox = made.images[0][0]

    text, artifact = await generate_video(
        ctx, prompt="the fox turns its head", image_id="latest", backend="local", seed=3, **SMALL
    )

    [(record, data)] = artifact.videos
    assert f"[{record.id}]" in text and f"from image {fox.id}" in text
    assert "takes no prompt" in text  # SVD animates without text: said, not hidden
    stored = await ctx.services.videos.get(record.id, ctx.turn.user_id)
    assert stored.source_image_id == fox.id
    assert (stored.backend, stored.model) == (
        "local",
        ctx.services.video_backends.get("local").default_model,
    )
    assert (stored.seconds, stored.fps, stored.frames, stored.seed) == (1.0, 4.0, 4, 3)
    assert (stored.width, stored.height, stored.mime) == (32, 32, "video/mp4")
    assert stored.prompt_typed == "the fox turns its head" and stored.prompt_sent is None
    assert stored.parameters["source"]["image_id"] == fox.id
    assert stored.parameters["request"] == {
        "seconds": 1.0,
        "fps": 4,
        "size": "32x32",
        "steps": 2,
        "seed": 3,
    }
    # The local GPU is free by default; the cost is the measured time at $0.
    assert stored.cost_usd == Decimal(0) and stored.parameters["cost"]["source"] == "reported"
    # What is stored is what was shown, and it plays: 4 frames of 32x32.
    assert ctx.services.videos.read(stored) == data
    assert frames_of(data, tmp_path) == ((32, 32), 4)
    # Both files are claimed for Eve's thread, so the media route serves them to her only.
    images = ctx.services.images
    assert await images.media_owner_ok(stored.media_key, ctx.turn.user_id) == "video/mp4"
    assert await images.media_owner_ok(stored.poster_key, ctx.turn.user_id) == "image/png"
    mallory = await UserStore(session_factory(world.engine)).add("mallory", "password-456")
    assert await images.media_owner_ok(stored.media_key, mallory.id) is None
    with pytest.raises(NotFound):
        await ctx.services.videos.get(record.id, mallory.id)


async def test_any_image_of_the_thread_by_id(world) -> None:
    ctx = world.ctx
    _, first = await generate_image(ctx, "a blue heron")
    await generate_image(ctx, "a green frog")
    heron = first.images[0][0]

    _, artifact = await generate_video(ctx, image_id=heron.id, backend="local", **SMALL)
    assert artifact.videos[0][0].source_image_id == heron.id
    # With neither an image nor a prompt, "animate it": the most recent image.
    _, artifact = await generate_video(ctx, backend="local", **SMALL)
    frog = (await ctx.services.images.for_thread(ctx.turn.thread_id, ctx.turn.user_id))[-1]
    assert artifact.videos[0][0].source_image_id == frog.id != heron.id


# --- Text-to-video --------------------------------------------------------------------------


async def test_text_to_video_directly_on_a_model_that_does_it(world, fake_replicate) -> None:
    ctx = world.ctx
    text, artifact = await generate_video(ctx, prompt="waves at dusk")

    [create] = fake_replicate.creates()
    assert create.path == "/v1/models/minimax/video-01/predictions"
    assert "first_frame_image" not in create.json["input"]
    record = artifact.videos[0][0]
    assert record.source_image_id is None and await world.count(Image) == 0
    assert (record.seconds, record.fps, record.frames) == (6.0, 25.0, 150)
    # Priced from the table before it ran, settled in the ledger after.
    assert world.chat.announced and "$0.5000" in world.chat.announced[0]
    assert record.cost_usd == Decimal("0.5") and record.parameters["cost"]["source"] == "table"
    [entry] = await world.rows(LedgerEntry)
    assert (entry.what, entry.status, entry.backend, entry.model) == (
        "video",
        "settled",
        "replicate",
        "minimax/video-01",
    )
    assert entry.estimate_usd == entry.actual_usd == Decimal("0.5")
    assert "6 s clip" in text


async def test_text_to_video_on_an_image_only_model_draws_a_keyframe_first(world) -> None:
    ctx = world.ctx
    text, artifact = await generate_video(
        ctx, prompt="a lighthouse at night", backend="local", **SMALL
    )

    [keyframe] = await world.rows(Image)
    assert keyframe.prompt_typed == "a lighthouse at night"
    assert keyframe.model == "black-forest-labs/flux-schnell"  # the conversation's image backend
    # The keyframe was shown before the clip was made, with a caption saying so.
    [shown] = world.chat.shown
    assert shown.images[0][0].id == keyframe.id and "Keyframe for the clip" in shown.caption
    record = artifact.videos[0][0]
    assert record.source_image_id == keyframe.id and record.parameters["keyframe"] is True
    assert "keyframe was drawn first" in text
    assert artifact.images == []  # already shown


async def test_without_a_live_chat_the_keyframe_comes_with_the_clip(world) -> None:
    world.chat.shows = False  # nobody watches: nothing is shown mid-call
    _, artifact = await generate_video(world.ctx, prompt="a windmill", backend="local", **SMALL)
    assert [record.id for record, _ in artifact.images] == [artifact.videos[0][0].source_image_id]


# --- Refusals, before anything runs or is spent ----------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (
            {"seconds": 3.0},
            InvalidInput,
            r"clips of 0\.5 to 1 s at 4 fps \(2 to 4 frames\); 3 s \(12 frames\)",
        ),
        ({"fps": 90}, InvalidInput, "at 3 to 30 fps; 90 fps was asked"),
        ({"size": "2048x2048"}, InvalidInput, "Valid sizes"),
    ],
)
async def test_length_rate_and_size_outside_the_models_range(
    world, fake_replicate, arguments, error, message
) -> None:
    ctx = world.ctx
    await generate_image(ctx, "a red fox")
    with pytest.raises(error, match=message):
        await generate_video(ctx, image_id="latest", backend="local", **{**SMALL, **arguments})
    assert await world.count(Video) == 0


async def test_a_text_to_video_refusal_comes_before_the_keyframe_is_paid_for(
    world, fake_replicate
) -> None:
    with pytest.raises(InvalidInput, match="clips of"):
        await generate_video(world.ctx, prompt="a lighthouse", backend="local", seconds=30)
    assert fake_replicate.creates() == [] and await world.count(Image) == 0
    assert await world.count(LedgerEntry) == 0


async def test_an_image_that_is_not_yours_is_not_found(world, tiny_svd_dir) -> None:
    ctx = world.ctx
    await generate_image(ctx, "eve's fox")
    eves_fox = (await world.rows(Image))[0]
    mallory = await UserStore(session_factory(world.engine)).add("mallory", "password-456")
    intruder = tool_context(
        thread_id="0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5",
        user_id=mallory.id,
        backends=ctx.services.backends,
        images=ctx.services.images,
        videos=ctx.services.videos,
        video_backends=ctx.services.video_backends,
    )
    with pytest.raises(NotFound, match="No image with id"):
        await generate_video(intruder, image_id=eves_fox.id, backend="local", **SMALL)
    with pytest.raises(InvalidInput, match="Invalid image id"):
        await generate_video(intruder, image_id="../../etc/passwd", backend="local", **SMALL)
    assert await world.count(Video) == 0


@pytest.mark.parametrize(
    ("backend", "error", "message"),
    [
        ("openai", InvalidInput, "makes images only, not video. Video backends: local, replicate"),
        ("nope", InvalidInput, "Unknown video backend 'nope'"),
        (
            "replicate:wan-video/wan-2.2-t2v-fast",
            InvalidInput,
            "makes video from text only; it cannot start from an image",
        ),
    ],
)
async def test_backends_and_models_that_cannot_do_it(world, backend, error, message) -> None:
    ctx = world.ctx
    await generate_image(ctx, "a red fox")
    with pytest.raises(error, match=message):
        await generate_video(ctx, prompt="it runs", image_id="latest", backend=backend)


async def test_text_to_video_model_needs_a_prompt_image_model_needs_an_image(world) -> None:
    ctx = world.ctx
    with pytest.raises(InvalidInput, match="has no image yet"):
        await generate_video(ctx, backend="replicate:kwaivgi/kling-v2.1")  # nothing to animate
    await generate_image(ctx, "a red fox")
    with pytest.raises(InvalidInput, match="needs a prompt"):
        await generate_video(ctx, backend="replicate:kwaivgi/kling-v2.1")


async def test_no_video_backend_configured(world) -> None:
    world.ctx = with_services(world.ctx, video_backends=VideoBackendRegistry({}))
    with pytest.raises(BackendNotConfigured, match="No video backend is configured"):
        await generate_video(world.ctx, prompt="waves")
    with pytest.raises(BackendNotConfigured, match="local video backend is not configured"):
        await generate_video(world.ctx, prompt="waves", backend="local")


# --- Stopping ----------------------------------------------------------------------------


async def test_a_stopped_clip_spends_nothing_and_keeps_nothing(world, fake_replicate) -> None:
    fake_replicate.configure(processing_polls=100_000)
    task = asyncio.create_task(generate_video(world.ctx, prompt="slow waves"))
    await wait_until(
        lambda: len(fake_replicate.requests_to(r"^/v1/predictions/\w+$")) >= 2, 10, "two polls"
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    [entry] = await world.rows(LedgerEntry)
    assert entry.status == "released" and entry.actual_usd is None
    assert await world.count(Video) == 0
    assert fake_replicate.predictions()[0]["status"] == "canceled"
