"""CLIP on a worker: likeness vectors and curation's scores as `embedding` jobs.

One real `atelier worker --queues embedding` subprocess on the CPU (tests/worker_fixtures.py)
runs the tiny random-weight CLIP of tests/tiny_clip.py against the Redis here. What is
checked is what a user relies on: the worker's vectors and scores are the ones this
process computes; the gallery's embedding worker and its search work through it; and
the real app (`atelier run`, with a broker) answers a likeness search, and `atelier
gallery backfill` fills the vectors, without ever loading torch itself.
"""

from __future__ import annotations

import asyncio
import functools
import io
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from chat_app.embedding_worker import build_likeness
from chat_app.settings import Settings
from core.errors import BackendNotConfigured
from memory.db import create_engine, migrate, session_factory
from memory.images import ImageStore, NewImage
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines import job_runners
from pipelines.devices import DevicePlan
from pipelines.remote import job_codec
from pipelines.remote.board_keys import BoardKeys
from pipelines.remote.celery_runner import last_run
from pipelines.remote.worker_info import WorkerInfo
from pipelines.scoring import clip_embeddings, image_scoring
from pipelines.scoring.clip_jobs import NO_WORKER, ClipJob, RemoteClip, Vectors, run_clip_job
from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user, app_rows, atelier
from tests.chat_client import login_cookie
from tests.waiting import wait_until_sync
from tests.worker_fixtures import WorkerPool

pytestmark = pytest.mark.timeout(120)
WORKER = "clip1"


def _png(seed: int) -> bytes:
    """Random coloured blocks: different seeds, different embeddings."""
    rng = random.Random(seed)
    picture = PILImage.new("RGB", (48, 48))
    for x in range(0, 48, 12):
        for y in range(0, 48, 12):
            picture.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 12, y + 12))
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def _new(seed: int, prompt: str = "a picture") -> NewImage:
    return NewImage(
        data=_png(seed),
        mime="image/png",
        width=48,
        height=48,
        prompt_typed=prompt,
        prompt_sent=prompt,
        backend="openai",
        model="gpt-image-2",
        parameters={},
    )


def _exact(vectors: dict[str, np.ndarray], query: np.ndarray) -> list[str]:
    """Every stored vector ranked by its cosine with the query, by brute force."""
    return sorted(vectors, key=lambda image_id: -float(vectors[image_id] @ query))


# --- Without a worker --------------------------------------------------------------------


def test_a_clip_job_crosses_with_the_workers_plan_and_its_vectors_come_back() -> None:
    job = ClipJob("/models/clip", "images", images=(b"png",))
    blob = job_codec.dumps_job(functools.partial(run_clip_job, job))
    fn, _ = job_codec.loads_job(blob, {}.__getitem__, DevicePlan("cuda:1", "float16"))

    assert job_codec.job_kind(fn) == "embedding"
    assert job_codec.job_model(fn) == "/models/clip"  # routing prefers a worker holding it
    assert fn.args[0].plan.device == "cuda:1" and fn.args[0].images == (b"png",)
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    blob = job_codec.dumps_result(Vectors.of(rows), DevicePlan("cpu", "float32"), "w")
    back = job_codec.loads_result(blob)["value"].array()  # through the restricted unpickler
    assert back.dtype == np.float32 and np.array_equal(back, rows)


async def test_with_no_worker_taking_clip_jobs_it_says_how_to_start_one(tmp_path: Path) -> None:
    pool = WorkerPool(tmp_path)  # a board with no workers at all
    runner = pool.runner()
    try:
        with pytest.raises(BackendNotConfigured) as refused:
            await RemoteClip(runner).embed_text("/models/clip", "a fox")
        assert str(refused.value) == NO_WORKER
        assert (await runner.board.snapshot()).queued_by_kind == {}  # nothing left waiting
    finally:
        await runner.aclose()
        pool.stop()


# --- With a worker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    workers = WorkerPool(tmp_path_factory.mktemp("clip-workers"))
    try:
        workers.start(WORKER, kinds=("embedding",))
        yield workers
    finally:
        workers.stop()


@pytest.fixture
async def remote(pool: WorkerPool) -> AsyncIterator[RemoteClip]:
    await asyncio.to_thread(pool.wait_ready)
    async with pool.dispatching(pool.runner()) as runner:
        yield RemoteClip(runner)


@pytest.mark.slow
async def test_the_worker_computes_the_vectors_and_scores_this_process_does(
    pool: WorkerPool, remote: RemoteClip, tiny_clip_dir: Path
) -> None:
    model = str(tiny_clip_dir)
    pictures = [_png(seed) for seed in range(5)]

    there = await remote.embed_images(model, pictures)
    assert last_run() is not None and last_run().worker == WORKER  # type: ignore[union-attr]
    np.testing.assert_allclose(
        there, clip_embeddings.embed_images(pictures, model, "cpu"), atol=1e-6
    )
    query = await remote.embed_text(model, "a red fox at night")
    np.testing.assert_allclose(
        query, clip_embeddings.embed_text("a red fox at night", model, "cpu"), atol=1e-6
    )

    # Curation's ranking, whose CLIP part now comes from the worker, in a thread as the
    # curate and check_quality tools call it.
    weights = {image_scoring.CLIP: 1.0, "sharpness": 0.5}
    remote_clip = image_scoring.clip_for(model, remote)
    ranked, notes, _ = await asyncio.to_thread(
        image_scoring.score_images, pictures, "an apple", weights, remote_clip
    )
    local, _, _ = image_scoring.score_images(
        pictures, "an apple", weights, image_scoring.clip_for(model)
    )
    assert not notes
    assert [r.index for r in ranked] == [r.index for r in local]
    for mine, theirs in zip(local, ranked, strict=True):
        assert [s.criterion for s in theirs.scores] == [s.criterion for s in mine.scores]
        assert theirs.scores[0].value == pytest.approx(mine.scores[0].value, abs=1e-6)

    # The worker's heartbeat says it holds the model, so routing sends CLIP jobs there.
    await asyncio.to_thread(
        wait_until_sync, lambda: model in _heartbeat(pool).loaded_models, 10, "the heartbeat"
    )
    assert (await remote.embed_images(model, [])).shape[0] == 0


def _heartbeat(pool: WorkerPool) -> WorkerInfo:
    import redis

    client = redis.Redis.from_url(pool.redis_url)
    try:
        return WorkerInfo.from_json(client.get(BoardKeys(pool.prefix).worker(WORKER)) or "{}")
    finally:
        client.close()


@pytest.mark.slow
async def test_the_gallerys_embedding_worker_and_search_run_through_the_worker(
    pool: WorkerPool, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(pool.wait_ready)
    settings = Settings(
        data_dir=tmp_path,
        clip_model=str(tiny_clip_dir),
        local_device="cpu",
        broker_url=pool.redis_url,
        broker_prefix=pool.prefix,
    )
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    await migrate(engine)
    media = MediaStore(tmp_path / "media")
    likeness, worker = build_likeness(settings, engine, media)
    assert worker is not None and likeness.remote is not None  # CLIP runs on the workers
    images = ImageStore(engine, media)
    images.on_recorded = worker.enqueue
    users = UserStore(session_factory(engine))
    alice = (await users.add("alice", "alice-password-1")).id
    bob = (await users.add("bob", "bob-password-12")).id
    await job_runners.start(settings)  # the app's dispatcher, as Runtime.start runs it
    worker.start()
    try:
        thread = str(uuid.uuid4())
        mine = [(await images.record(thread, alice, _new(seed)))[0].id for seed in range(6)]
        theirs = (await images.record(str(uuid.uuid4()), bob, _new(99)))[0].id
        await asyncio.wait_for(worker.idle(), 60)

        vectors = {i: await likeness.index.vector_of(alice, likeness.model, i) for i in mine}
        expected = clip_embeddings.embed_images([_png(s) for s in range(6)], str(tiny_clip_dir))
        for image_id, row in zip(mine, expected, strict=True):
            np.testing.assert_allclose(vectors[image_id], row, atol=1e-5)
        query = clip_embeddings.embed_text("a red fox", str(tiny_clip_dir), "cpu")
        found = await likeness.search_text(alice, "a red fox", k=10)
        assert [image_id for image_id, _ in found] == _exact(vectors, query)
        like = await likeness.more_like(bob, theirs, k=10)
        assert like == []  # only bob's own images, and he has no other
    finally:
        await worker.stop()
        await job_runners.reset()
        await engine.dispose()


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
def test_the_app_with_a_broker_searches_by_likeness_without_loading_torch(
    pool: WorkerPool, tiny_clip_dir: Path, tmp_path: Path
) -> None:
    env = {
        **pool.env,
        "ATELIER_CLIP_MODEL": str(tiny_clip_dir),
        "ATELIER_GALLERY_LIKENESS": "true",
    }
    app = AppProcess(tmp_path / "data", env).start()
    try:
        add_user(app, "bob", "bobs-password")
        ids = {row["identifier"]: row["id"] for row in app_rows(app, "SELECT * FROM users")}
        seeded = asyncio.run(_seed(app.data_dir, ids["admin"], ids["bob"]))
        pool.wait_ready()

        filled = atelier("gallery", "backfill", "--data-dir", str(app.data_dir), env=env)
        assert filled.returncode == 0, filled.stdout + filled.stderr
        assert "Done: 5 embedded." in filled.stdout

        with sqlite3.connect(app.data_dir / "atelier.db") as db:
            rows = dict(db.execute("SELECT image_id, vector FROM image_embeddings").fetchall())
        stored = {i: np.frombuffer(blob, dtype="<f4") for i, blob in rows.items()}
        model = str(tiny_clip_dir)
        expected = clip_embeddings.embed_images([_png(s) for s in range(5)], model, "cpu")
        for seed, row in enumerate(expected):
            np.testing.assert_allclose(stored[seeded[seed]], row, atol=1e-5)

        cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
        with httpx.Client(base_url=app.base_url, headers={"Cookie": cookie}, timeout=60) as admin:
            assert admin.get("/api/gallery/capabilities").json()["likeness"] is True
            found = admin.get("/api/gallery/similar", params={"q": "a red fox"})
            assert found.status_code == 200, found.text
            admins = {seeded[s]: stored[seeded[s]] for s in range(4)}  # bob's is not shown
            query = clip_embeddings.embed_text("a red fox", model, "cpu")
            assert [i["id"] for i in found.json()["items"]] == _exact(admins, query)
            # An image stored after the backfill is embedded on demand, by the worker too.
            late = asyncio.run(_seed(app.data_dir, ids["admin"], None, seeds=(7,)))[0]
            like = admin.get("/api/gallery/similar", params={"like": late})
            assert like.status_code == 200, like.text
            assert {i["id"] for i in like.json()["items"]} == set(admins)

        assert app.proc is not None
        assert "libtorch" not in _maps(app.proc.pid)  # the app never loaded torch
        assert "libtorch" in _maps(pool.processes[WORKER].pid)  # its worker did
    finally:
        app.stop()


async def _seed(
    data_dir: Path, admin_id: str, bob_id: str | None, seeds: tuple[int, ...] = (0, 1, 2, 3)
) -> list[str]:
    """Images recorded through the app's own store, outside the app (no vectors yet):
    `seeds` for admin, then seed 4 for bob when given."""
    engine = create_engine(f"sqlite+aiosqlite:///{data_dir / 'atelier.db'}")
    images = ImageStore(engine, MediaStore(data_dir / "media"))
    try:
        thread = str(uuid.uuid4())
        made = [(await images.record(thread, admin_id, _new(s)))[0].id for s in seeds]
        if bob_id is not None:
            made.append((await images.record(str(uuid.uuid4()), bob_id, _new(4)))[0].id)
    finally:
        await engine.dispose()
    return made
