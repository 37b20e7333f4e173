"""A batch's download (memory/batch_export.py): the final images as stored and a manifest
with one row per item and attempt that matches the database; owner only."""

from __future__ import annotations

import csv
import io
import zipfile
from decimal import Decimal

import pytest

from core.errors import NotFound
from memory.batch_export import zip_batch
from memory.db import create_engine, migrate, session_factory
from memory.media_store import MediaStore
from memory.users import UserStore
from tests.fakes.openai_server import DISC_TEST
from tests.test_batch_runner import SPEC, World
from tools.batch_runner import BatchSpec


@pytest.fixture
async def sqlite_engine(tmp_path):
    made = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}")
    try:
        await migrate(made)
        yield made
    finally:
        await made.dispose()


async def test_the_zip_holds_the_final_images_and_a_row_per_attempt(
    tmp_path, sqlite_engine, fake_openai
):
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    prompts = [
        f"apple {DISC_TEST}",
        "=HYPERLINK(plain)",
        "pear FAIL_MODERATION",
        f"fig {DISC_TEST}",
    ]
    spec = BatchSpec(**{**SPEC.to_dict(), "checks": ("background", "coverage"), "qc_retries": 1})
    batch = await world.batch(prompts, spec)
    await world.runner.start(world.ctx, batch, None)
    await world.runner.wait(batch.id)
    items = await world.items(batch)
    assert [i.status for i in items] == ["done", "failed", "failed", "done"]

    media = MediaStore(tmp_path / "media")  # where the world's images are
    path = await zip_batch(world.store, media, world.services.images, batch.id, world.user_id)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            manifest = archive.read("manifest.csv").decode("utf-8")
            files = {name: archive.read(name) for name in names if name != "manifest.csv"}
    finally:
        path.unlink()
    # The final images of items 1, 2 (its best failed attempt) and 4, byte for byte.
    assert sorted(files) == ["0001-object-0.png", "0002-object-1.png", "0004-object-3.png"]
    for item in (items[0], items[1], items[3]):
        record = await world.services.images.get(item.image_ids[0], world.user_id)
        name = f"{item.position + 1:04d}-object-{item.position}.png"
        assert files[name] == world.services.images.read(record)

    rows = list(csv.DictReader(io.StringIO(manifest)))
    expected = [(i, a) for i in items for a in i.attempts]
    assert len(rows) == len(expected) == 1 + 2 + 1 + 1  # item 2 tried twice
    for row, (item, attempt) in zip(rows, expected, strict=True):
        assert int(row["position"]) == item.position and row["label"] == item.label
        assert row["status"] == item.status and row["prompt_sent"].lstrip("'") == item.prompt_sent
        assert int(row["attempt"]) == attempt["n"] and row["outcome"] == attempt["outcome"]
        assert int(row["seed"]) == attempt["seed"]
        assert row["image_id"] == " ".join(attempt["image_ids"])
        assert Decimal(row["cost_usd"]) == Decimal(attempt["cost_usd"])
        for name, score in attempt["scores"].items():
            assert float(row[f"check.{name}"]) == pytest.approx(score)
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum(i.cost_usd for i in items)
    # The row of the attempt whose images were kept names its file; a formula-like
    # prompt is made inert.
    for row, (item, attempt) in zip(rows, expected, strict=True):
        kept = attempt["image_ids"] and attempt["image_ids"] == item.image_ids
        assert row["file"] == (
            f"{item.position + 1:04d}-object-{item.position}.png" if kept else ""
        )
    assert [r["file"] != "" for r in rows].count(True) == 3
    assert rows[1]["prompt_sent"].startswith("'=")
    assert "safety system" in rows[3]["error"]


async def test_another_users_batch_is_not_found(tmp_path, sqlite_engine, fake_openai):
    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    batch = await world.batch([f"apple {DISC_TEST}"], SPEC)
    other = await UserStore(session_factory(sqlite_engine)).add("mallory", "password-456")
    media = MediaStore(tmp_path / "media")  # where the world's images are
    with pytest.raises(NotFound, match="No batch with id"):
        await zip_batch(world.store, media, world.services.images, batch.id, other.id)


async def test_an_image_deleted_from_the_gallery_leaves_a_gap_not_a_broken_download(
    tmp_path, sqlite_engine, fake_openai
):
    """Deleting one of a batch's images (the gallery's Delete) must not break the zip or
    the contact sheet of the rest: the manifest keeps the id, the sheet an empty tile."""
    from memory.gallery_actions import delete_item

    world = World(tmp_path, sqlite_engine, fake_openai)
    await world.account()
    batch = await world.batch([f"apple {DISC_TEST}", f"fig {DISC_TEST}"], SPEC)
    await world.runner.start(world.ctx, batch, None)
    await world.runner.wait(batch.id)
    first, second = await world.items(batch)
    media = MediaStore(tmp_path / "media")  # where the world's images are
    await delete_item(sqlite_engine, media, world.user_id, first.image_ids[0])

    path = await zip_batch(world.store, media, world.services.images, batch.id, world.user_id)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode())))
    finally:
        path.unlink()
    assert sorted(names) == ["0002-object-1.png", "manifest.csv"]
    assert [r["image_id"] for r in rows] == [first.image_ids[0], second.image_ids[0]]
    assert [r["file"] for r in rows] == ["", "0002-object-1.png"]
    sheet = await world.runner.contact_sheet(batch.id, world.user_id)
    assert sheet[:4] == b"\x89PNG"
