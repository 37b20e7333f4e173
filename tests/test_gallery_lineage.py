"""The lineage view's data: an image's family walked from the rows the tools record.

A generate → edit → variations → fork → animate → train chain is recorded through the
real stores (tests/gallery_rows.py), then `family` is asked from different members; on
SQLite and PostgreSQL. Another user's ids are not found, and another user's rows that
point into the family (a made-up parent) never show up in it.
"""

from __future__ import annotations

import uuid

import pytest

from core.errors import NotFound
from memory.images import ImageStore
from memory.lineage import family
from tests.db_fixtures import db_url, engine, media  # noqa: F401 - fixtures
from tests.gallery_rows import account, chain, curation, new_image


def _edges(lineage) -> set[tuple[str, str, str]]:
    return {(e.parent, e.child, e.relation) for e in lineage.edges}


async def test_the_whole_chain_seen_from_any_member(engine, media):  # noqa: F811
    user = await account(engine, "ada")
    made = await chain(engine, media, user)
    # An image of the same thread that is no relation, and another user's.
    await ImageStore(engine, media).record(made.thread_id, user.id, new_image(9, "a cat"))

    lineage = await family(engine, user.id, made.forked.id)

    g, e, (v1, v2), f = made.generated, made.edited, made.varied, made.forked
    by_id = {node.id: node for node in lineage.nodes}
    assert set(by_id) == {g.id, e.id, v1.id, v2.id, f.id, made.clip.id, made.lora.id}
    assert lineage.focus == f.id and not lineage.truncated
    assert [n.id for n in lineage.nodes if n.focus] == [f.id]
    assert {i: by_id[i].operation for i in by_id} == {
        g.id: "generate",
        e.id: "edit",
        v1.id: "variations",
        v2.id: "variations",
        f.id: "fork",
        made.clip.id: "animate",
        made.lora.id: "train",
    }
    assert {i: by_id[i].kind for i in (g.id, made.clip.id, made.lora.id)} == {
        g.id: "image",
        made.clip.id: "video",
        made.lora.id: "lora",
    }
    assert _edges(lineage) == {
        (g.id, e.id, "edit"),
        (e.id, v1.id, "variations"),
        (e.id, v2.id, "variations"),
        (v1.id, f.id, "fork"),
        (f.id, made.clip.id, "animate"),
        (f.id, made.lora.id, "train"),  # the dataset manifest names f and v2
        (v2.id, made.lora.id, "train"),
    }
    # Pictures: an image's own file, a clip's poster; none for a LoRA.
    assert by_id[f.id].thumb_key == f.media_key
    assert by_id[made.clip.id].thumb_key == made.clip.poster_key
    assert by_id[made.lora.id].thumb_key is None and by_id[made.lora.id].label == "night-fox"
    assert by_id[g.id].label == "a fox in the snow"
    assert all(n.created_at.tzinfo is not None for n in lineage.nodes)

    # Every member sees the same family, the clip included.
    from_root = await family(engine, user.id, made.generated.id)
    from_clip = await family(engine, user.id, made.clip.id)
    assert {n.id for n in from_root.nodes} == {n.id for n in from_clip.nodes}
    assert _edges(from_root) == _edges(from_clip)
    assert from_clip.focus == made.clip.id
    assert [n.id for n in from_clip.nodes if n.focus] == [made.clip.id]

    # A large family is capped, keeping the focus and its ancestors first.
    capped = await family(engine, user.id, made.forked.id, max_nodes=4)
    ids = {n.id for n in capped.nodes}
    assert capped.truncated and ids == {g.id, e.id, v1.id, f.id}
    assert all(edge.parent in ids and edge.child in ids for edge in capped.edges)


async def test_the_curation_an_image_won(engine, media):  # noqa: F811
    user = await account(engine, "ada")
    made = await chain(engine, media, user)
    rival, _ = await ImageStore(engine, media).record(
        made.thread_id,
        user.id,
        new_image(7, "a fox", lineage={"operation": "curation candidate"}),
    )
    curation_id = await curation(engine, made.thread_id, user, made.generated, rival)

    lineage = await family(engine, user.id, made.edited.id)

    by_id = {node.id: node for node in lineage.nodes}
    assert by_id[curation_id].kind == "curation"
    assert by_id[curation_id].label == "a fox, the best of two"
    assert by_id[rival.id].operation == "curation candidate"
    assert {(curation_id, made.generated.id, "kept"), (curation_id, rival.id, "rejected")} <= (
        _edges(lineage)
    )


async def test_another_users_ids_and_rows_stay_out(engine, media):  # noqa: F811
    ada, bob = await account(engine, "ada"), await account(engine, "bob")
    made = await chain(engine, media, ada)
    for item_id in (made.forked.id, made.clip.id, str(uuid.uuid4()), "not-an-id"):
        with pytest.raises(NotFound) as caught:
            await family(engine, bob.id, item_id)
        assert item_id not in str(caught.value)
    with pytest.raises(NotFound):
        await family(engine, ada.id, made.lora.id)  # a LoRA is no gallery item

    # Bob's image claims Ada's fork as its parent (the store does not check a parent).
    intruder, _ = await ImageStore(engine, media).record(
        str(uuid.uuid4()),
        bob.id,
        new_image(8, "bob's", parent=made.forked, lineage={"operation": "edit"}),
    )
    ada_family = await family(engine, ada.id, made.generated.id)
    assert intruder.id not in {n.id for n in ada_family.nodes}
    bob_family = await family(engine, bob.id, intruder.id)
    assert [n.id for n in bob_family.nodes] == [intruder.id] and not bob_family.edges
