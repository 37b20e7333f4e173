"""find_images: "take the fox I made last week and animate it", from another conversation.

Ann made a fox last week (and a fox cub last month) in one conversation; Mallory made a
fox too. In a second conversation the scripted chat model (the fake OpenAI server's
brain, reached by the real client) calls find_images, then generate_video with the id it
found; the clip is read back from the videos table. The tool is also called directly on
SQLite and PostgreSQL: filters, the slash command, likeness after words (the tiny CLIP),
and never another user's image.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from sqlalchemy import select, update

from chat_app.agent import run_turn
from chat_app.settings import Settings
from core.errors import InvalidInput, NotFound
from memory.db import session_factory
from memory.gallery import Gallery
from memory.image_embeddings import EmbeddingIndex
from memory.images import ImageRecord, ImageStore
from memory.media_store import MediaStore
from memory.models import Image, Video, utcnow
from memory.users import UserStore
from memory.videos import NewVideo, VideoStore
from pipelines.images.registry import BackendRegistry
from pipelines.scoring import clip_embeddings
from pipelines.scoring.likeness import Likeness
from pipelines.video.local_video import LocalStableVideo
from pipelines.video.video_registry import VideoBackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.openai_server import FakeOpenAI, Reply, ToolCall
from tests.test_agent_turn import in_a_chat
from tests.test_tools import SeededBackend
from tests.tool_helpers import tool_context, with_services, with_turn
from tools import registry
from tools.context import GenerationDefaults, ToolContext
from tools.find_images import find_images
from tools.generate_image import generate_image
from tools.variations import variations

FIRST = "6f1c2b9e-3d4a-4e5f-8a7b-1c2d3e4f5a60"  # Ann's conversation last week
SECOND = "7a2d3c0f-4e5b-4f60-9b8c-2d3e4f5a6b71"  # Ann's conversation today
MALLORYS = "8b3e4d1a-5f6c-4a71-8c9d-3e4f5a6b7c82"
CLIP = {"size": "32x32", "fps": 4, "seconds": 1.0, "steps": 2}  # the tiny SVD, 4 frames
FULL_ID = re.compile(r"image ([0-9a-f-]{36}) \|")


class World:
    def __init__(self, database: Any, ann: ToolContext, mallory: ToolContext) -> None:
        self.engine, self.ann, self.mallory = database, ann, mallory

    async def make(
        self, ctx: ToolContext, thread_id: str, prompt: str, days_ago: float
    ) -> ImageRecord:
        """An image made with the tool in `thread_id`, dated `days_ago`."""
        _, artifact = await generate_image(with_turn(ctx, thread_id=thread_id), prompt)
        record = artifact.images[0][0]
        async with session_factory(self.engine)() as session, session.begin():
            await session.execute(
                update(Image)
                .where(Image.id == record.id)
                .values(created_at=utcnow() - timedelta(days=days_ago))
            )
        return record

    async def rows(self, model: type) -> list[Any]:
        async with session_factory(self.engine)() as session:
            return list((await session.scalars(select(model))).all())


async def build_world(database: Any, media: MediaStore, **more: Any) -> World:
    """Ann in her second conversation, Mallory in hers; `more` are further Services."""
    users = UserStore(session_factory(database))
    ann, mallory = await users.add("ann", "password-123"), await users.add("mal", "password-456")
    shared = {
        "backends": BackendRegistry({"seeded": SeededBackend()}),
        "images": ImageStore(database, media),
        "videos": VideoStore(database, media),
        "defaults": GenerationDefaults(backend="seeded"),
        "gallery": Gallery(database),
        **more,
    }
    return World(
        database,
        tool_context(user_id=ann.id, thread_id=SECOND, **shared),
        tool_context(user_id=mallory.id, thread_id=MALLORYS, **shared),
    )


@pytest.fixture
async def world(tmp_path: Path, engine: Any) -> World:  # noqa: F811
    return await build_world(engine, MediaStore(tmp_path / "media"))


async def ids_found(ctx: ToolContext, *positional: Any, **args: Any) -> list[str]:
    text, artifact = await find_images(ctx, *positional, **args)
    found = FULL_ID.findall(text)
    assert all(image_id in (artifact.text or "") for image_id in found)  # full ids shown
    return found


# --- the agent, from a second conversation ---------------------------------------------


# SQLite only: the loop does not depend on the database (the reads are tested on both below).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_fox_made_last_week_is_found_and_animated_from_another_conversation(
    tmp_path: Path,
    engine: Any,  # noqa: F811
    fake_openai: FakeOpenAI,
    tiny_svd_dir: Path,
) -> None:
    local = LocalStableVideo(model=str(tiny_svd_dir), device="cpu")
    world = await build_world(
        engine,
        MediaStore(tmp_path / "media"),
        video_backends=VideoBackendRegistry({"local": local}),
    )
    fox = await world.make(world.ann, FIRST, "a red fox in the snow", days_ago=6)
    await world.make(world.ann, FIRST, "a lighthouse at dusk", days_ago=6)
    cub = await world.make(world.ann, FIRST, "a fox cub asleep", days_ago=40)
    malloys_fox = await world.make(world.mallory, MALLORYS, "a fox in a field", days_ago=1)

    def brain(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        last = messages[-1]
        if last["role"] == "user":
            return Reply(tool_calls=[ToolCall("find_images", {"query": "fox", "since_days": 14})])
        if last["role"] == "tool" and "Found" in str(last["content"]):
            [found] = FULL_ID.findall(str(last["content"]))
            arguments = {"image_id": found, "prompt": "the fox runs", "backend": "local", **CLIP}
            return Reply(tool_calls=[ToolCall("generate_video", arguments)])
        return Reply(content="Here it is, running.")

    fake_openai.brain = brain
    settings = Settings(
        openai_api_key="sk-test-not-a-real-key",
        openai_base_url=fake_openai.base_url,
        llm_model="gpt-test",
        max_retries=0,
    )
    in_a_chat()
    messages = [
        SystemMessage(content="You are a test."),
        HumanMessage(content="take the fox I made last week and animate it"),
    ]
    try:
        await run_turn(settings, world.ann, messages)
    finally:
        local.runner.shutdown()  # type: ignore[attr-defined]

    searched, animated = [m for m in messages if isinstance(m, ToolMessage)]
    assert searched.status != "error" and fox.id in str(searched.content)
    assert cub.id not in str(searched.content)  # 40 days ago: not "last week"
    assert malloys_fox.id not in str(searched.content)
    assert animated.status != "error", animated.content
    [clip] = await world.rows(Video)
    assert (clip.source_image_id, clip.thread_id) == (fox.id, SECOND)
    assert clip.user_id == world.ann.turn.user_id
    assert messages[-1].content == "Here it is, running."


# --- the tool on both databases --------------------------------------------------------


async def test_only_the_users_own_images_are_ever_found(world: World) -> None:
    ann_fox = await world.make(world.ann, FIRST, "a red fox in the snow", days_ago=3)
    mal_fox = await world.make(world.mallory, MALLORYS, "a fox in a field", days_ago=1)
    assert await ids_found(world.ann, "fox") == [ann_fox.id]
    assert await ids_found(world.mallory, "fox") == [mal_fox.id]
    assert await ids_found(world.ann) == [ann_fox.id]  # no words: the newest
    assert await ids_found(world.mallory, "snow") == []
    text, _ = await find_images(world.mallory, "snow")
    assert text.startswith("Found nothing for 'snow'")


async def test_filters_narrow_what_is_found(world: World) -> None:
    recent = await world.make(world.ann, FIRST, "a fox at dawn", days_ago=2)
    older = await world.make(world.ann, FIRST, "a fox at dusk", days_ago=20)
    oldest = await world.make(world.ann, FIRST, "a fox at noon", days_ago=90)
    await world.ann.services.images.keep(older.id, world.ann.turn.user_id)
    assert await ids_found(world.ann, "fox") == [recent.id, older.id, oldest.id]  # newest first
    assert await ids_found(world.ann, "fox", since_days=7) == [recent.id]
    assert await ids_found(world.ann, "fox", since_days=30) == [recent.id, older.id]
    assert await ids_found(world.ann, "fox", kept=True) == [older.id]
    assert await ids_found(world.ann, "fox", limit=1) == [recent.id]
    assert await ids_found(world.ann, "fox", model="no-such-model") == []
    assert await ids_found(world.ann, "FOX AT DAWN") == [recent.id]  # case does not matter
    # A clip is listed as a video, not an image: its id is not one to animate.
    await world.ann.services.videos.record(
        SECOND,
        world.ann.turn.user_id,
        NewVideo(
            data=b"\x00\x00\x00\x18ftypmp42",
            poster=world.ann.services.images.read(recent),
            width=32,
            height=32,
            frames=4,
            fps=4.0,
            seconds=1.0,
            prompt_typed="the fox runs",
            prompt_sent="the fox runs",
            backend="local",
            model="tiny-svd",
            parameters={},
            source_image_id=recent.id,
        ),
    )
    text, _ = await find_images(world.ann, "fox runs", kind="video")
    [(clip_id,)] = [(row.id,) for row in await world.rows(Video)]
    assert f"video {clip_id} |" in text and FULL_ID.findall(text) == []
    assert await ids_found(world.ann, "fox", kind="image") == [recent.id, older.id, oldest.id]


async def test_a_found_image_from_another_conversation_can_be_carried_on(world: World) -> None:
    """variations (like generate_video, edit_image and fork_image) takes any image of the
    user's by id: the new image is recorded here, derived from the one found there."""
    fox = await world.make(world.ann, FIRST, "a red fox in the snow", days_ago=6)
    [found] = await ids_found(world.ann, "red fox", since_days=14)
    _, artifact = await variations(world.ann, image_id=found, n=1)
    [(made, _)] = artifact.images
    assert (made.parent_id, made.thread_id) == (fox.id, SECOND)
    # Mallory cannot: the id is not found for her (reads are scoped to the user).
    with pytest.raises(NotFound, match="No image with id"):
        await variations(world.mallory, image_id=found, n=1)


# --- likeness after words ----------------------------------------------------------------


async def test_images_that_look_like_the_words_follow_the_prompt_matches(
    tmp_path: Path,
    engine: Any,  # noqa: F811
    tiny_clip_dir: Path,
) -> None:
    """With the likeness index on, the words' prompt matches come first, then the user's
    other images by CLIP similarity (the exact-search order), filters applied to both."""
    media = MediaStore(tmp_path / "media")
    likeness = Likeness(EmbeddingIndex(engine), media, str(tiny_clip_dir), "cpu")
    world = await build_world(engine, media, likeness=likeness)
    ann = world.ann.turn.user_id
    fox = await world.make(world.ann, FIRST, "a red fox in the snow", days_ago=3)
    heron = await world.make(world.ann, FIRST, "a heron by the lake", days_ago=2)
    owl = await world.make(world.ann, FIRST, "an owl on a branch", days_ago=1)
    old = await world.make(world.ann, FIRST, "a lighthouse at dusk", days_ago=60)
    theirs = await world.make(world.mallory, MALLORYS, "a fox in a field", days_ago=1)
    for owner, record in [(ann, fox), (ann, heron), (ann, owl), (ann, old)]:
        await likeness.embed_now(owner, record.id)
    await likeness.embed_now(world.mallory.turn.user_id, theirs.id)

    query = clip_embeddings.embed_text("fox", str(tiny_clip_dir), "cpu")
    vectors = {
        r.id: await likeness.index.vector_of(ann, likeness.model, r.id) for r in (heron, owl)
    }
    alike = sorted(vectors, key=lambda image_id: -float(vectors[image_id] @ query))

    assert await ids_found(world.ann, "fox", since_days=7) == [fox.id, *alike]
    text, _ = await find_images(world.ann, "fox", since_days=7)
    assert f"image {fox.id} |" in text and "prompt matches" in text and "looks alike" in text
    assert old.id not in text and theirs.id not in text
    assert len(await ids_found(world.ann, "fox", limit=2)) == 2
    assert theirs.id not in await ids_found(world.ann, "fox", limit=20)
    assert await ids_found(world.ann, "fox", kind="video") == []  # clips have no vectors

    # Off (no local extra, or turned off): words only, and the model is told so.
    world.ann = with_services(world.ann, likeness=Likeness.unavailable("Install the extra."))
    assert await ids_found(world.ann, "fox", since_days=7) == [fox.id]
    text, _ = await find_images(world.ann, "foxes at night")
    assert "likeness search is off" in text


# --- arguments and the slash command ---------------------------------------------------


def test_the_find_command_takes_the_tools_arguments() -> None:
    [command] = find_images.commands
    assert registry.find_command("find", "x")[1] is find_images  # type: ignore[index]
    assert find_images.parse(command, "red fox in snow --days 14 --kept yes --limit 5") == {
        "query": "red fox in snow",
        "since_days": 14,
        "kept": True,
        "limit": 5,
    }
    with pytest.raises(InvalidInput, match="limit"):
        find_images.validate({"query": "fox", "limit": 21})
    with pytest.raises(InvalidInput, match="since_days"):
        find_images.validate({"since_days": 0})
    with pytest.raises(InvalidInput, match="kind"):
        find_images.validate({"kind": "sound"})


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_short_id_from_another_conversation_names_the_users_image_only(
    world: World,
) -> None:
    """`/animate --image 1a2b3c4d` after /find: the 8 characters a caption shows resolve
    across the user's conversations, never to someone else's image or by a wildcard."""
    from chat_app.commands import _full_image_id

    fox = await world.make(world.ann, FIRST, "a red fox in the snow", days_ago=1)
    assert await _full_image_id(world.ann, fox.id[:8]) == fox.id
    for ctx, given in ((world.mallory, fox.id[:8]), (world.ann, "%%%%"), (world.ann, "____")):
        with pytest.raises(InvalidInput, match="None of your images has an id starting with"):
            await _full_image_id(ctx, given)
