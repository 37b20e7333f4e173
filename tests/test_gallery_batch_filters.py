"""The gallery's batch, schedule and source filters against real databases: rows written
straight into the tables (batches, images.batch_id) and read back through `Gallery`, the
query string parsed as the HTTP API parses it, and another user's ids matching nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from core.errors import InvalidInput
from memory.gallery import Gallery, GalleryFilters
from memory.models import Batch
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.test_gallery_queries import NOW, Maker, ids


async def _batch(make: Maker, user_id: str, thread_id: str, schedule_id: str | None = None) -> str:
    batch_id = str(uuid.uuid4())
    async with make.sessions.begin() as s:
        s.add(
            Batch(
                id=batch_id,
                user_id=user_id,
                thread_id=thread_id,
                schedule_id=schedule_id,
                title="a batch",
                status="done",
                spec={},
                estimate_usd=0,
                item_count=1,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    return batch_id


@pytest.fixture
def make(engine: Any) -> Maker:  # noqa: F811
    return Maker(engine)


async def test_batch_schedule_and_source_filters(engine, make):  # noqa: F811
    me, other = await make.user("me"), await make.user("other")
    thread, theirs = await make.thread(me), await make.thread(other)
    schedule = str(uuid.uuid4())
    batch = await _batch(make, me, thread)
    run = await _batch(make, me, thread, schedule_id=schedule)
    their_batch = await _batch(make, other, theirs)
    chat = await make.image(thread, me)
    in_batch = [await make.image(thread, me, batch_id=batch) for _ in range(2)]
    in_run = await make.image(thread, me, batch_id=run)
    clip = await make.video(thread, me)
    await make.image(theirs, other, batch_id=their_batch)
    gallery = Gallery(engine)

    assert set(await ids(gallery, me, batch_id=batch)) == set(in_batch)
    assert await ids(gallery, me, schedule_id=schedule) == [in_run]
    assert set(await ids(gallery, me, origin="batch")) == set(in_batch)
    assert await ids(gallery, me, origin="schedule") == [in_run]
    assert set(await ids(gallery, me, origin="chat")) == {chat, clip}  # clips come from chat
    assert len(await ids(gallery, me)) == 5
    # Combined with other filters; narrowed to one batch, a run's images are not in it.
    assert await ids(gallery, me, batch_id=batch, origin="schedule") == []
    # Another user's batch, or their schedule's, matches nothing of mine and shows nothing.
    assert await ids(gallery, me, batch_id=their_batch) == []
    assert await ids(gallery, other, schedule_id=schedule) == []
    assert len(await ids(gallery, other, origin="batch")) == 1


def test_the_query_string_names_and_refusals():
    batch = str(uuid.uuid4())
    parsed = GalleryFilters.from_query({"batch": batch.upper(), "origin": "schedule"})
    assert (parsed.batch_id, parsed.origin) == (batch, "schedule")
    assert parsed.images_only  # clips have no batch
    assert not GalleryFilters.from_query({"origin": "chat"}).images_only
    assert GalleryFilters.from_query({"batch": "", "origin": ""}) == GalleryFilters()
    with pytest.raises(InvalidInput, match="Invalid batch: expected a UUID"):
        GalleryFilters.from_query({"batch": "1 OR 1=1"})
    with pytest.raises(InvalidInput, match="Invalid schedule: expected a UUID"):
        GalleryFilters.from_query({"schedule": "x"})
    with pytest.raises(InvalidInput, match="Invalid origin: expected 'batch', 'schedule'"):
        GalleryFilters.from_query({"origin": "somewhere"})
    with pytest.raises(InvalidInput, match="Invalid kind: clips have no batch"):
        GalleryFilters.from_query({"kind": "video", "batch": batch})
    with pytest.raises(InvalidInput, match="Invalid kind: clips have no origin"):
        GalleryFilters.from_query({"kind": "video", "origin": "schedule"})
    assert GalleryFilters.from_query({"kind": "video", "origin": "chat"}).videos_only
