"""Acting on gallery items: the zip download with its manifest, delete, and reuse in a new
conversation; rows made through the real stores and read back (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile

import pytest
from sqlalchemy import func, select

from core.errors import InvalidInput, NotFound
from memory.db import session_factory, write_session
from memory.gallery import Gallery
from memory.gallery_actions import delete_item, reuse_in_new_conversation, set_kept
from memory.gallery_export import MAX_ITEMS, zip_items
from memory.images import ImageStore, NewImage
from memory.lineage import family
from memory.models import CurationCandidate, Element, ImageEmbedding, MediaRef
from memory.png_metadata import read_embedded
from memory.videos import VideoStore
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import (  # noqa: F401 - fixtures
    chainlit_context,
    data_layer,
    db_url,
    engine,
    media,
    requester,
)
from tests.gallery_rows import account, chain, curation, new_image
from tests.lora_fixtures import picture
from tests.tool_helpers import tool_context


def _manifest(archive: zipfile.ZipFile) -> dict[str, dict[str, str]]:
    text = archive.read("manifest.csv").decode("utf-8")
    return {row["id"]: row for row in csv.DictReader(io.StringIO(text))}


async def test_zip_has_the_stored_files_and_a_manifest_of_the_records(engine, media):  # noqa: F811
    ada, bob = await account(engine, "ada"), await account(engine, "bob")
    made = await chain(engine, media, ada)
    await set_kept(engine, ada.id, made.forked.id, True)
    gallery = _gallery(engine)
    ids = [made.forked.id, made.clip.id, made.generated.id]

    path = await zip_items(gallery, media, ada.id, ids)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            rows = _manifest(archive)
            files = {name: archive.read(name) for name in names}
    finally:
        path.unlink()

    clip = made.clip
    assert sorted(names) == sorted(
        [
            "manifest.csv",
            f"{made.forked.id}.png",
            f"{made.generated.id}.png",
            f"{clip.id}.mp4",
            f"{clip.id}-poster.png",
        ]
    )
    # The files as stored: the PNGs with their parameters embedded.
    assert files[f"{clip.id}.mp4"] == media.get(clip.media_key)
    assert files[f"{clip.id}-poster.png"] == media.get(clip.poster_key)
    for record in (made.forked, made.generated):
        data = files[f"{record.id}.png"]
        assert data == media.get(record.media_key)
        embedded = read_embedded(data)
        assert json.loads(embedded["atelier"])["image_id"] == record.id
        assert embedded["parameters"].startswith(record.prompt_sent)

    # One manifest row per item, in the order asked, matching the database.
    assert list(rows) == ids
    images = ImageStore(engine, media)
    fork = await images.get(made.forked.id, ada.id)
    row = rows[fork.id]
    assert row["file"] == f"{fork.id}.png" and row["kind"] == "image"
    assert row["prompt_typed"] == fork.prompt_typed and row["prompt_sent"] == fork.prompt_sent
    assert (row["backend"], row["model"]) == (fork.backend, fork.model)
    assert (int(row["width"]), int(row["height"]), int(row["seed"])) == (32, 32, fork.seed)
    assert row["cost_usd"] == "0.040000" == format(fork.cost_usd, "f")
    assert row["duration_ms"] == str(fork.duration_ms)
    assert row["parent_id"] == made.varied[0].id and row["kept"] == "True"
    assert row["thread_id"] == made.thread_id and row["media_key"] == fork.media_key
    # Every parameter, nested ones under dotted names.
    assert row["parameters.lineage.operation"] == "fork"
    assert row["parameters.lineage.source"] == made.varied[0].id
    assert row["parameters.lineage.changed.prompt"] == "a fox at night"
    assert row["parameters.request.size"] == "32x32"
    assert row["parameters.cost.usd"] == "0.040000"
    assert row["parameters.usage.images"] == "1"
    # Formula-safe: a cell that would start a formula is quoted.
    assert row["parameters.request.negative_prompt"] == "'=cmd|' /C calc'!A0"
    video = rows[clip.id]
    assert video["kind"] == "video" and video["file"] == f"{clip.id}.mp4"
    assert video["poster_file"] == f"{clip.id}-poster.png"
    assert video["source_image_id"] == fork.id and float(video["seconds"]) == 1.0
    assert video["parameters.request.fps"] == "8" and video["cost_usd"] == "0.100000"
    assert rows[made.generated.id]["parent_id"] == ""

    # Someone else's ids, made-up ones, or too many: refused, naming none of them.
    for wrong in ([made.forked.id], [str(uuid.uuid4())], ["not-an-id"]):
        with pytest.raises(NotFound) as caught:
            await zip_items(gallery, media, bob.id, wrong)
        assert wrong[0] not in caught.value.message
    with pytest.raises(NotFound):
        await zip_items(gallery, media, ada.id, [made.forked.id, str(uuid.uuid4())])
    with pytest.raises(InvalidInput, match="At most 500"):
        await zip_items(gallery, media, ada.id, [str(uuid.uuid4()) for _ in range(MAX_ITEMS + 1)])
    with pytest.raises(InvalidInput):
        await zip_items(gallery, media, ada.id, [])


async def test_delete_removes_the_item_and_its_files_but_not_what_came_of_it(engine, media):  # noqa: F811
    ada, bob = await account(engine, "ada"), await account(engine, "bob")
    made = await chain(engine, media, ada)
    images = ImageStore(engine, media)
    edited = made.edited
    async with write_session(session_factory(engine)) as session:
        session.add(
            ImageEmbedding(image_id=edited.id, user_id=ada.id, model="m", dim=1, vector=b"\0" * 4)
        )
        session.add(_element(made.thread_id, edited.id, edited.media_key))

    with pytest.raises(NotFound):  # not Bob's to delete
        await delete_item(engine, media, bob.id, edited.id)
    assert media.exists(edited.media_key)

    gone = await delete_item(engine, media, ada.id, edited.id)

    assert gone.kind == "image" and gone.removed_files == [edited.media_key]
    assert not media.exists(edited.media_key)
    with pytest.raises(NotFound):
        await images.get(edited.id, ada.id)
    assert await _count(engine, MediaRef, MediaRef.media_key == edited.media_key) == 0
    assert await _count(engine, Element, Element.media_key == edited.media_key) == 0
    assert await _count(engine, ImageEmbedding, ImageEmbedding.image_id == edited.id) == 0
    # What was derived from it keeps its own record, and its file.
    for varied in made.varied:
        kept = await images.get(varied.id, ada.id)
        assert kept.parent_id is None and kept.parameters["lineage"]["source"] == edited.id
        assert media.exists(kept.media_key)
    lineage = await family(engine, ada.id, made.forked.id)
    assert made.generated.id not in {n.id for n in lineage.nodes}
    # Its place in a curation goes with it; the rival's stays.
    rival, _ = await images.record(made.thread_id, ada.id, new_image(12, "a rival"))
    await curation(engine, made.thread_id, ada, made.generated, rival)
    await delete_item(engine, media, ada.id, made.generated.id)
    assert (
        await _count(engine, CurationCandidate, CurationCandidate.image_id.in_([made.generated.id]))
        == 0
    )
    assert await _count(engine, CurationCandidate, CurationCandidate.image_id == rival.id) == 1

    # A clip: the MP4 and its poster go; the image it was made from stays.
    clip = await delete_item(engine, media, ada.id, made.clip.id)
    assert clip.kind == "video"
    assert set(clip.removed_files) == {made.clip.media_key, made.clip.poster_key}
    with pytest.raises(NotFound):
        await VideoStore(engine, media).get(made.clip.id, ada.id)
    assert (await images.get(made.forked.id, ada.id)).id == made.forked.id

    # A file another user also stored (same bytes, content-addressed) stays for them.
    jpeg = picture(42, fmt="JPEG")
    mine, _ = await images.record(str(uuid.uuid4()), ada.id, _upload(jpeg))
    theirs, _ = await images.record(str(uuid.uuid4()), bob.id, _upload(jpeg))
    assert mine.media_key == theirs.media_key
    shared = await delete_item(engine, media, ada.id, mine.id)
    assert shared.removed_files == [] and media.exists(theirs.media_key)
    assert await images.media_owner_ok(theirs.media_key, bob.id) == "image/jpeg"
    assert await images.media_owner_ok(mine.media_key, ada.id) is None


async def test_reuse_starts_a_conversation_only_its_owner_reads(
    engine,  # noqa: F811
    media,  # noqa: F811
    data_layer,  # noqa: F811
    requester,  # noqa: F811
):
    ada, bob = await account(engine, "ada"), await account(engine, "bob")
    made = await chain(engine, media, ada)
    source = made.forked
    with pytest.raises(NotFound):
        await reuse_in_new_conversation(engine, media, bob.id, source.id)
    with pytest.raises(InvalidInput, match="Only an image"):
        await reuse_in_new_conversation(engine, media, ada.id, made.clip.id)

    thread_id = await reuse_in_new_conversation(engine, media, ada.id, source.id)

    # The copy: derived from the source, in the new conversation, costing nothing.
    images = ImageStore(engine, media)
    [copy] = await images.for_thread(thread_id, ada.id)
    assert copy.parent_id == source.id and copy.cost_usd is None
    assert copy.parameters["lineage"] == {"operation": "reuse", "source": source.id}
    assert copy.parameters["request"] == source.parameters["request"]
    assert "cost" not in copy.parameters
    assert json.loads(read_embedded(images.read(copy))["atelier"])["image_id"] == copy.id
    assert await images.media_owner_ok(copy.media_key, ada.id) == "image/png"
    assert await images.media_owner_ok(copy.media_key, bob.id) is None
    # The chat tools take it as the conversation's latest image ("animate it").
    ctx = tool_context(
        user_id=ada.id, thread_id=thread_id, backends=BackendRegistry({}), images=images
    )
    assert (await ctx.image(None)).id == copy.id
    # It is in the source's family, as a reuse.
    lineage = await family(engine, ada.id, source.id)
    assert (source.id, copy.id, "reuse") in {(e.parent, e.child, e.relation) for e in lineage.edges}

    # Opened, the conversation shows a message with the image (the data layer's resume).
    requester.act_as(ada)
    thread = await data_layer.get_thread(thread_id)
    assert thread is not None and thread["name"] == "a fox at night"
    assert thread["userId"] == ada.id
    [step] = thread["steps"]
    assert step["type"] == "assistant_message" and copy.id in step["output"]
    [element] = thread["elements"]
    assert element["type"] == "image" and element["forId"] == step["id"]
    assert element["name"] == f"{copy.id}.png" and element["display"] == "inline"
    assert element["url"].startswith(f"/media/{copy.media_key}?")
    assert [m["id"] for m in await data_layer.recent_messages(thread_id, 10)] == [step["id"]]
    # It is the newest conversation in the sidebar.
    from chainlit.types import Pagination, ThreadFilter

    listed = await data_layer.list_threads(Pagination(first=5), ThreadFilter(userId=ada.id))
    assert listed.data[0]["id"] == thread_id
    # And nobody else can open it.
    requester.act_as(bob)
    assert await data_layer.get_thread(thread_id) is None

    # A styled image's copy keeps its style; the app's store hears of the copy.
    heard: list[str] = []
    app_images = ImageStore(engine, media)
    app_images.on_recorded = lambda record, user_id: heard.append(record.id)
    styled, _ = await images.record(
        made.thread_id,
        ada.id,
        new_image(11, "a crayon fox", lineage={"operation": "refine", "style": "crayon"}),
    )
    styled_thread = await reuse_in_new_conversation(
        engine, media, ada.id, styled.id, images=app_images
    )
    [styled_copy] = await images.for_thread(styled_thread, ada.id)
    assert styled_copy.parameters["lineage"]["style"] == "crayon" and heard == [styled_copy.id]
    assert (await Gallery(engine).detail(ada.id, styled_copy.id)).style == "crayon"


async def test_star_and_unstar(engine, media):  # noqa: F811
    ada, bob = await account(engine, "ada"), await account(engine, "bob")
    made = await chain(engine, media, ada)
    gallery = _gallery(engine)
    first = await set_kept(engine, ada.id, made.edited.id, True)
    assert first is not None
    assert await set_kept(engine, ada.id, made.edited.id, True) == first  # the first time
    [item] = await gallery.items(ada.id, [made.edited.id])
    assert item.kept
    assert await set_kept(engine, ada.id, made.edited.id, False) is None
    [item] = await gallery.items(ada.id, [made.edited.id])
    assert not item.kept
    with pytest.raises(NotFound):
        await set_kept(engine, bob.id, made.edited.id, True)
    with pytest.raises(InvalidInput):
        await set_kept(engine, ada.id, made.clip.id, True)


# --------------------------------------------------------------------- helpers


def _gallery(engine) -> Gallery:  # noqa: F811
    return Gallery(engine)


async def _count(engine, model, *where) -> int:  # noqa: F811
    async with session_factory(engine)() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where))


def _element(thread_id: str, image_id: str, key: str) -> Element:
    """The chat's element showing the image, as chat_app/rendering.py has it stored."""
    return Element(
        id=str(uuid.uuid4()),
        thread_id=thread_id,
        for_id=None,
        type="image",
        name=f"{image_id}.png",
        display="inline",
        size="large",
        mime="image/png",
        media_key=key,
    )


def _upload(data: bytes) -> NewImage:
    return NewImage(
        data=data,
        mime="image/jpeg",
        width=32,
        height=32,
        prompt_typed="",
        prompt_sent="",
        backend="upload",
        model="upload",
        parameters={"filename": "fox.jpg"},
    )
