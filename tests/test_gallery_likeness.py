"""Find by likeness: images embedded by a tiny CLIP when stored, searched exactly, owner-only.

Images go through the real ImageStore (SQLite and PostgreSQL) with the embedding worker
on its hook, as the app wires it; every answer is checked against a search computed here,
independently, with numpy over the vectors read back from the table.
"""

from __future__ import annotations

import asyncio
import io
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import delete, select
from structlog.testing import capture_logs

from chat_app import cli
from chat_app.embedding_worker import EmbeddingWorker, build_likeness
from chat_app.settings import Settings
from core.errors import BackendNotConfigured, InvalidInput, NotFound
from memory.db import create_engine, session_factory, write_session
from memory.image_embeddings import EmbeddingIndex
from memory.images import ImageStore, NewImage
from memory.media_store import MediaStore
from memory.models import Image, ImageEmbedding
from pipelines.scoring import clip_embeddings
from pipelines.scoring.likeness import Likeness
from tests.db_fixtures import *  # noqa: F403

pytestmark = pytest.mark.timeout(120)


def _png(seed: int) -> bytes:
    """A small picture of random coloured blocks: different seeds, different embeddings."""
    rng = random.Random(seed)
    picture = PILImage.new("RGB", (48, 48))
    for x in range(0, 48, 12):
        for y in range(0, 48, 12):
            colour = tuple(rng.randrange(256) for _ in range(3))
            picture.paste(colour, (x, y, x + 12, y + 12))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _new(data: bytes, prompt: str = "a picture", mime: str = "image/png") -> NewImage:
    return NewImage(
        data=data,
        mime=mime,
        width=48,
        height=48,
        prompt_typed=prompt,
        prompt_sent=prompt,
        backend="openai",
        model="gpt-image-2",
        parameters={},
    )


def _settings(data_dir: Path, clip_dir: Path, **more: Any) -> Settings:
    return Settings(data_dir=data_dir, clip_model=str(clip_dir), local_device="cpu", **more)


async def _stored_vectors(engine: Any, user_id: str) -> dict[str, np.ndarray]:
    async with session_factory(engine)() as session:
        rows = await session.execute(
            select(ImageEmbedding.image_id, ImageEmbedding.vector).where(
                ImageEmbedding.user_id == user_id
            )
        )
        return {image_id: np.frombuffer(blob, dtype="<f4") for image_id, blob in rows}


def _exact(vectors: dict[str, np.ndarray], query: np.ndarray, k: int) -> list[str]:
    """The answer by brute force: every stored vector's cosine with the query, best first."""
    scored = sorted(
        ((float(np.dot(v, query) / np.linalg.norm(v) / np.linalg.norm(query)), i))
        for i, v in vectors.items()
    )
    return [image_id for _, image_id in reversed(scored)][:k]


async def _users(users: Any) -> tuple[str, str]:
    alice = await users.add("alice", "alice-password-1")
    bob = await users.add("bob", "bob-password-12")
    return alice.id, bob.id


@pytest.fixture
async def wired(engine: Any, media: MediaStore, tiny_clip_dir: Path, tmp_path: Path) -> Any:
    """The store with the worker on its hook, as build_runtime wires them; worker started."""
    likeness, worker = build_likeness(_settings(tmp_path, tiny_clip_dir), engine, media)
    assert worker is not None and likeness.available
    images = ImageStore(engine, media)
    images.on_recorded = worker.enqueue
    worker.start()
    yield images, likeness, worker
    await worker.stop()


async def test_search_returns_the_exact_answer_and_only_the_users_images(
    engine: Any, users: Any, wired: Any
) -> None:
    images, likeness, worker = wired
    alice, bob = await _users(users)
    thread = str(uuid.uuid4())
    mine = [(await images.record(thread, alice, _new(_png(seed))))[0].id for seed in range(7)]
    theirs = [
        (await images.record(str(uuid.uuid4()), bob, _new(_png(100 + seed))))[0].id
        for seed in range(3)
    ]
    await worker.idle()

    vectors = await _stored_vectors(engine, alice)
    assert set(vectors) == set(mine)
    # Each stored vector is the image's own embedding, as the file was stored.
    record = await images.get(mine[0], alice)
    again = clip_embeddings.embed_images([images.read(record)], likeness.model_id, "cpu")[0]
    np.testing.assert_allclose(vectors[mine[0]], again, atol=1e-5)

    query = clip_embeddings.embed_text("a red fox at night", likeness.model_id, "cpu")
    found = await likeness.search_text(alice, "a red fox at night", k=4)
    assert [image_id for image_id, _ in found] == _exact(vectors, query, 4)
    for image_id, score in found:
        assert score == pytest.approx(float(vectors[image_id] @ query), abs=1e-5)

    like = await likeness.more_like(alice, mine[2], k=3)
    rest = {i: v for i, v in vectors.items() if i != mine[2]}
    assert [image_id for image_id, _ in like] == _exact(rest, vectors[mine[2]], 3)

    everything = await likeness.search_text(alice, "anything", k=100)
    assert {image_id for image_id, _ in everything} == set(mine)
    among = [mine[1], mine[4], mine[5], theirs[0]]  # someone else's id is simply not there
    filtered = await likeness.search_text(alice, "a red fox at night", k=2, among=among)
    subset = {i: vectors[i] for i in among[:3]}
    assert [image_id for image_id, _ in filtered] == _exact(subset, query, 2)

    with pytest.raises(NotFound):
        await likeness.more_like(alice, theirs[0])
    with pytest.raises(NotFound):
        await likeness.more_like(alice, str(uuid.uuid4()))
    bobs = await likeness.more_like(bob, theirs[0], k=100)
    assert {image_id for image_id, _ in bobs} == set(theirs[1:])


async def test_the_cache_catches_up_with_new_replaced_and_deleted_vectors(
    engine: Any, users: Any, wired: Any
) -> None:
    images, likeness, worker = wired
    alice, _ = await _users(users)
    thread = str(uuid.uuid4())
    ids = [(await images.record(thread, alice, _new(_png(seed))))[0].id for seed in range(5)]
    await worker.idle()
    query = clip_embeddings.embed_text("boats", likeness.model_id, "cpu")
    assert len(await likeness.index.nearest(alice, likeness.model, query, k=50)) == 5

    # The newest image deleted (SQLite may give its row id to the next one) and one added.
    async with write_session(session_factory(engine)) as session:
        await session.execute(delete(Image).where(Image.id == ids[-1]))
    ids[-1] = (await images.record(thread, alice, _new(_png(50))))[0].id
    # Another's vector replaced by a different one (a re-embedding under a new row id).
    await likeness.index.add(ids[0], alice, likeness.model, -np.ones(len(query)))

    await worker.idle()
    found = await likeness.index.nearest(alice, likeness.model, query, k=50)
    vectors = await _stored_vectors(engine, alice)
    assert set(vectors) == set(ids)
    assert [image_id for image_id, _ in found] == _exact(vectors, query, 50)
    np.testing.assert_allclose(
        await likeness.index.vector_of(alice, likeness.model, ids[0]),
        -np.ones(len(query)) / np.sqrt(len(query)),
        atol=1e-6,
    )


async def test_a_row_id_freed_by_deletions_never_leaves_a_stale_vector(
    engine: Any, users: Any, wired: Any
) -> None:
    """SQLite without AUTOINCREMENT gives a deleted last row's id to the next row; the
    cache must not take the new image for the old one whatever the table does."""
    images, likeness, worker = wired
    alice, _ = await _users(users)
    thread = str(uuid.uuid4())
    ids = [(await images.record(thread, alice, _new(_png(seed))))[0].id for seed in range(4)]
    await worker.idle()
    query = clip_embeddings.embed_text("kites", likeness.model_id, "cpu")

    async def search() -> list[str]:
        return [i for i, _ in await likeness.index.nearest(alice, likeness.model, query, k=50)]

    async def drop(image_id: str) -> None:
        async with write_session(session_factory(engine)) as session:
            await session.execute(delete(Image).where(Image.id == image_id))

    await search()
    await drop(ids[2])  # a gap below the last row
    await search()
    await drop(ids[3])  # the last row: its id (or the gap's) is free again
    newest = (await images.record(thread, alice, _new(_png(9))))[0].id
    await worker.idle()
    vectors = await _stored_vectors(engine, alice)
    assert set(vectors) == {ids[0], ids[1], newest}
    assert await search() == _exact(vectors, query, 50)


async def test_a_file_that_cannot_be_embedded_is_left_out_and_the_turn_goes_on(
    engine: Any, users: Any, wired: Any
) -> None:
    images, likeness, worker = wired
    alice, _ = await _users(users)
    thread = str(uuid.uuid4())
    good = (await images.record(thread, alice, _new(_png(1))))[0].id
    bad = (await images.record(thread, alice, _new(b"not a jpeg", mime="image/jpeg")))[0].id
    also_good = (await images.record(thread, alice, _new(_png(2))))[0].id
    await worker.idle()
    assert set(await _stored_vectors(engine, alice)) == {good, also_good}
    assert await likeness.index.missing(likeness.model, 10) == [bad]
    with pytest.raises(InvalidInput):  # asked for directly, the reason is told
        await likeness.more_like(alice, bad)


async def test_a_model_that_cannot_load_is_tried_once_not_per_image(
    engine: Any, media: MediaStore, users: Any, tmp_path: Path
) -> None:
    """Offline, or a wrong model id: the first image finds out, the next ones wait for the
    backfill instead of each paying for a failed load."""
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    likeness, worker = build_likeness(_settings(tmp_path, empty), engine, media)
    assert worker is not None
    images = ImageStore(engine, media)
    images.on_recorded = worker.enqueue
    worker.start()
    alice, _ = await _users(users)
    thread = str(uuid.uuid4())
    try:
        with capture_logs() as logs:
            for n in range(3):
                await images.record(thread, alice, _new(_png(n)))
                await worker.idle()
    finally:
        await worker.stop()
    assert await _stored_vectors(engine, alice) == {}
    assert len(await likeness.index.missing(likeness.model, 10)) == 3  # left to the backfill
    failures = [e for e in logs if e["event"] == "embedding_model_unavailable"]
    assert len(failures) == 1 and failures[0]["model"] == str(empty)


async def test_more_like_an_image_stored_before_likeness_embeds_it_then(
    engine: Any, users: Any, media: MediaStore, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    alice, _ = await _users(users)
    images = ImageStore(engine, media)  # no worker: as before the feature
    thread = str(uuid.uuid4())
    ids = [(await images.record(thread, alice, _new(_png(seed))))[0].id for seed in range(3)]
    likeness, _ = build_likeness(_settings(tmp_path, tiny_clip_dir), engine, media)
    assert await likeness.search_text(alice, "anything") == []
    like = await likeness.more_like(alice, ids[0])
    assert like == []  # only itself has a vector so far
    assert set(await _stored_vectors(engine, alice)) == {ids[0]}


async def test_backfill_command_fills_missing_vectors_and_is_safe_to_rerun(
    db_url: str,
    engine: Any,
    users: Any,
    tiny_clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    media = MediaStore(data_dir / "media")
    alice, bob = await _users(users)
    images = ImageStore(engine, media)
    ids = [
        (await images.record(str(uuid.uuid4()), owner, _new(_png(seed))))[0].id
        for seed, owner in enumerate([alice, alice, alice, bob, bob])
    ]
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("ATELIER_DATABASE_URL", db_url)
    monkeypatch.setenv("ATELIER_CLIP_MODEL", str(tiny_clip_dir))
    monkeypatch.setenv("ATELIER_LOCAL_DEVICE", "cpu")
    args = ["gallery", "backfill", "--batch", "2", "--data-dir", str(data_dir)]

    assert await asyncio.to_thread(cli.main, args) == 0
    out = capsys.readouterr().out
    assert "5/5 images: 5 embedded" in out and "Done: 5 embedded." in out
    stored = {**await _stored_vectors(engine, alice), **await _stored_vectors(engine, bob)}
    assert set(stored) == set(ids)
    expected = clip_embeddings.embed_images(
        [images.read(await images.get(ids[3], bob))], str(tiny_clip_dir), "cpu"
    )[0]
    np.testing.assert_allclose(stored[ids[3]], expected, atol=1e-5)

    assert await asyncio.to_thread(cli.main, args) == 0
    assert "Every image already has its likeness embedding." in capsys.readouterr().out
    assert (await _stored_vectors(engine, alice)).keys() == {ids[0], ids[1], ids[2]}


def test_without_the_local_extra_likeness_is_unavailable_and_says_how_to_enable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_find_spec = clip_embeddings.importlib.util.find_spec

    def no_torch(name: str, *args: Any) -> Any:
        return None if name in ("torch", "transformers") else real_find_spec(name, *args)

    monkeypatch.setattr(clip_embeddings.importlib.util, "find_spec", no_torch)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    likeness, worker = build_likeness(
        Settings(data_dir=tmp_path), engine, MediaStore(tmp_path / "media")
    )
    assert worker is None and not likeness.available
    assert "pip install 'atelier[local]'" in likeness.how_to_enable
    assert "restart" in likeness.how_to_enable
    with pytest.raises(BackendNotConfigured, match=r"atelier\[local\]"):
        asyncio.run(likeness.search_text("someone", "foxes"))
    with pytest.raises(BackendNotConfigured, match=r"atelier\[local\]"):
        clip_embeddings.embed_text("foxes", "openai/clip-vit-base-patch32")

    monkeypatch.chdir(tmp_path)
    assert cli.main(["gallery", "backfill", "--data-dir", str(tmp_path / "data")]) == 2
    assert "pip install 'atelier[local]'" in capsys.readouterr().err


def test_turned_off_by_the_setting(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    likeness, worker = build_likeness(
        Settings(data_dir=tmp_path, gallery_likeness=False), engine, MediaStore(tmp_path)
    )
    assert worker is None and not likeness.available
    assert "ATELIER_GALLERY_LIKENESS" in likeness.how_to_enable
    assert isinstance(likeness, Likeness)


async def test_the_runtime_embeds_what_its_image_store_records(
    tiny_clip_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat_app.runtime import build_runtime

    monkeypatch.chdir(tmp_path)
    runtime = build_runtime(
        _settings(tmp_path / "data", tiny_clip_dir, admin_password="admin-password-1"),
        "x" * 64,
    )
    await runtime.start()
    try:
        assert isinstance(runtime.embeddings, EmbeddingWorker)
        owner = (await runtime.users.list())[0].id
        store = runtime.services.images
        first = (await store.record(str(uuid.uuid4()), owner, _new(_png(1))))[0].id
        second = (await store.record(str(uuid.uuid4()), owner, _new(_png(2))))[0].id
        await runtime.embeddings.idle()
        assert runtime.services.likeness is not None
        assert [i for i, _ in await runtime.services.likeness.more_like(owner, first)] == [second]
    finally:
        await runtime.stop()


async def test_index_refuses_bad_arguments(engine: Any) -> None:
    index = EmbeddingIndex(engine)
    with pytest.raises(InvalidInput):
        await index.nearest("u", "m", np.ones(4), k=0)
    with pytest.raises(InvalidInput):
        await index.nearest("u", "m", np.zeros(4))
    with pytest.raises(InvalidInput):
        await index.nearest("u", "m", np.array([np.nan, 1.0]))
    assert await index.nearest("u", "m", np.ones(4)) == []
