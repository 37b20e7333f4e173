"""The gallery's reads against real databases (SQLite and PostgreSQL): filters, prompt
search on and off its index, keyset pages, owner scope, detail, and the migration that
fills the new columns. Rows are written as the app writes them (ImageStore) or straight
into the tables, and read back through `Gallery`."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from core.errors import InvalidInput, NotFound
from memory import gallery_search
from memory.db import create_engine, migrate, session_factory
from memory.gallery import Gallery, GalleryFilters, GalleryItem
from memory.images import ImageStore, NewImage
from memory.media_store import MediaStore
from memory.models import (
    Curation,
    CurationCandidate,
    Image,
    ImageScore,
    Thread,
    User,
    Video,
)
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures

NOW = datetime(2026, 12, 12, 12, 0, tzinfo=UTC)


class Maker:
    """Small factory: users, threads, images and clips straight into the tables."""

    def __init__(self, bound: Any) -> None:
        self.engine = bound
        self.sessions = session_factory(bound)

    async def user(self, name: str) -> str:
        user_id = str(uuid.uuid4())
        async with self.sessions.begin() as s:
            s.add(User(id=user_id, identifier=name, meta={}, created_at=NOW))
        return user_id

    async def thread(self, user_id: str, name: str | None = None) -> str:
        thread_id = str(uuid.uuid4())
        async with self.sessions.begin() as s:
            s.add(Thread(id=thread_id, user_id=user_id, name=name, created_at=NOW, updated_at=NOW))
        return thread_id

    async def image(self, thread_id: str, user_id: str, **values: Any) -> str:
        row = {
            "id": str(uuid.uuid4()),
            "thread_id": thread_id,
            "user_id": user_id,
            "media_key": uuid.uuid4().hex * 2,
            "prompt_typed": "a kite",
            "prompt_sent": "a kite, detailed",
            "backend": "openai",
            "model": "gpt-image-1",
            "parameters": {},
            "width": 1024,
            "height": 1024,
            "created_at": NOW,
        }
        row.update(values)
        async with self.sessions.begin() as s:
            s.add(Image(**row))
        return row["id"]

    async def video(self, thread_id: str, user_id: str, **values: Any) -> str:
        row = {
            "id": str(uuid.uuid4()),
            "thread_id": thread_id,
            "user_id": user_id,
            "media_key": uuid.uuid4().hex * 2,
            "poster_key": uuid.uuid4().hex * 2,
            "prompt_typed": "animate it",
            "backend": "local",
            "model": "svd",
            "parameters": {},
            "width": 512,
            "height": 512,
            "frames": 14,
            "fps": 7.0,
            "seconds": 2.0,
            "created_at": NOW,
        }
        row.update(values)
        async with self.sessions.begin() as s:
            s.add(Video(**row))
        return row["id"]


async def ids(gallery: Gallery, user_id: str, **filters: Any) -> list[str]:
    page = await gallery.page(user_id, GalleryFilters(**filters), limit=200)
    assert page.next_cursor is None
    return [item.id for item in page.items]


@pytest.fixture
def make(engine: Any) -> Maker:  # noqa: F811
    return Maker(engine)


# ------------------------------------------------------------------ recording


async def test_recorded_images_carry_their_style_and_loras(engine, tmp_path):  # noqa: F811
    store = ImageStore(engine, MediaStore(tmp_path / "media"))
    maker = Maker(engine)
    me = await maker.user("me")
    thread = str(uuid.uuid4())

    def new(**parameters: Any) -> NewImage:
        return NewImage(
            data=b"GIF89a" + bytes(16),
            mime="image/gif",
            width=64,
            height=64,
            prompt_typed="a fox",
            prompt_sent="a fox",
            backend="local",
            model="tiny",
            parameters=parameters,
        )

    styled, _ = await store.record(
        thread,
        me,
        new(
            lineage={"operation": "refine", "style": "Watercolor"},
            request={"loras": [["InkFox", 0.8], ["owl_style", 1.0]]},
        ),
    )
    local, _ = await store.record(thread, me, new(loras=[{"name": "inkfox", "weight": 1.0}]))
    plain, _ = await store.record(thread, me, new(request={"size": "64x64"}))
    gallery = Gallery(engine)

    assert await ids(gallery, me, lora="inkfox") == [local.id, styled.id]
    assert await ids(gallery, me, lora="INKFOX") == [local.id, styled.id]
    assert await ids(gallery, me, lora="owl_style") == [styled.id]
    assert await ids(gallery, me, lora="owl") == []  # a whole name, not a part
    assert await ids(gallery, me, lora="owl%") == []  # wildcards are literal
    assert await ids(gallery, me, style="Watercolor") == [styled.id]
    detail = await gallery.detail(me, styled.id)
    assert (detail.style, detail.loras) == ("Watercolor", ["inkfox", "owl_style"])
    assert (await gallery.detail(me, plain.id)).loras == []


async def test_the_migration_fills_the_new_columns_and_the_search_index(db_url):  # noqa: F811
    old_engine = create_engine(db_url)
    try:
        await migrate(old_engine, "0012")
        maker = Maker(old_engine)
        users = sa.table(
            "users",
            *[sa.column(c) for c in ("id", "identifier", "role")],
            sa.column("metadata", sa.JSON()),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        me = str(uuid.uuid4())
        async with old_engine.begin() as conn:
            await conn.execute(
                users.insert().values(
                    id=me, identifier="me", role="user", metadata={}, created_at=NOW
                )
            )
        images = sa.table(
            "images",
            *[sa.column(c) for c in ("id", "thread_id", "user_id", "media_key", "mime")],
            *[sa.column(c) for c in ("prompt_typed", "prompt_sent", "backend", "model")],
            sa.column("parameters", sa.JSON()),
            sa.column("width"),
            sa.column("height"),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        thread = str(uuid.uuid4())
        threads = sa.table(
            "threads",
            *[sa.column(c) for c in ("id", "user_id")],
            *[sa.column(c, sa.DateTime(timezone=True)) for c in ("created_at", "updated_at")],
        )
        async with old_engine.begin() as conn:
            await conn.execute(
                threads.insert().values(id=thread, user_id=me, created_at=NOW, updated_at=NOW)
            )
            old = {}
            for name, parameters in {
                "styled": {
                    "lineage": {"style": "pixel art"},
                    "request": {"loras": [["Inkfox", 1]]},
                },
                "plain": {"request": {"size": "1024x1024"}},
                "odd": {"lineage": "not a dict", "request": {"loras": "nope"}},
            }.items():
                old[name] = str(uuid.uuid4())
                await conn.execute(
                    images.insert().values(
                        id=old[name],
                        thread_id=thread,
                        user_id=me,
                        media_key="0" * 64,
                        mime="image/png",
                        prompt_typed=f"an old {name} lantern",
                        prompt_sent="",
                        backend="openai",
                        model="gpt-image-1",
                        parameters=parameters,
                        width=64,
                        height=64,
                        created_at=NOW,
                    )
                )

        await migrate(old_engine)

        gallery = Gallery(old_engine)
        assert await ids(gallery, me, style="pixel art") == [old["styled"]]
        assert await ids(gallery, me, lora="inkfox") == [old["styled"]]
        assert await ids(gallery, me, text="old plain lan") == [old["plain"]]
        # ...and images made after it are indexed by the triggers.
        new = await maker.image(thread, me, prompt_typed="a new lantern")
        assert await ids(gallery, me, text="new lantern") == [new]
    finally:
        await old_engine.dispose()


# -------------------------------------------------------------------- filters


async def test_every_filter(engine, make):  # noqa: F811
    me, other = await make.user("me"), await make.user("other")
    thread, theirs = await make.thread(me, "Foxes"), await make.thread(other)
    fox = await make.image(
        thread,
        me,
        prompt_typed="a red fox at night",
        model="flux-dev",
        backend="replicate",
        cost_usd=Decimal("0.040000"),
        kept_at=NOW,
        style="watercolor",
        lora_names="|inkfox|",
        created_at=NOW - timedelta(days=5),
    )
    owl = await make.image(
        thread,
        me,
        prompt_typed="",
        prompt_sent="an owl in 100% cotton",
        width=512,
        height=512,
        cost_usd=Decimal("0.010000"),
        lora_names="|inkfox|owl_style|",
        created_at=NOW - timedelta(days=2),
    )
    cat = await make.image(
        thread,
        me,
        prompt_typed="an under_score cat",
        backend="local",
        model="sdxl",
        width=768,
        height=512,
        style="photo",
        created_at=NOW - timedelta(days=1),
    )
    clip = await make.video(thread, me, source_image_id=cat, prompt_typed="the cat walks")
    # Everything again, for someone else: never in my gallery.
    their_fox = await make.image(
        theirs, other, prompt_typed="a red fox at night", kept_at=NOW, style="watercolor"
    )
    await make.video(theirs, other, source_image_id=their_fox, created_at=NOW + timedelta(1))
    await make.video(theirs, other, source_image_id=fox)  # even on one of mine
    async with make.sessions.begin() as s:
        curation = Curation(id=str(uuid.uuid4()), thread_id=thread, user_id=me, prompt="a cat")
        s.add(curation)
        await s.flush()
        s.add(
            CurationCandidate(
                curation_id=curation.id, image_id=cat, rank=1, combined=0.8, verdict="kept"
            )
        )
        s.add(
            CurationCandidate(
                curation_id=curation.id, image_id=owl, rank=2, combined=0.3, verdict="rejected"
            )
        )
    gallery = Gallery(engine)

    assert await ids(gallery, me) == [clip, cat, owl, fox]
    assert await ids(gallery, me, kind="image") == [cat, owl, fox]
    assert await ids(gallery, me, kind="video") == [clip]
    assert await ids(gallery, me, model="flux-dev") == [fox]
    assert await ids(gallery, me, model="svd") == [clip]
    assert await ids(gallery, me, backend="local") == [clip, cat]
    assert await ids(gallery, me, style="watercolor") == [fox]
    assert await ids(gallery, me, since=NOW - timedelta(days=2)) == [clip, cat, owl]
    assert await ids(gallery, me, until=NOW - timedelta(days=2)) == [fox]
    assert await ids(
        gallery, me, since=NOW - timedelta(days=3), until=NOW - timedelta(hours=1)
    ) == [cat, owl]
    assert await ids(gallery, me, kept=True) == [fox]
    assert await ids(gallery, me, kept=False) == [cat, owl]
    assert await ids(gallery, me, min_score=0.5) == [cat]
    assert await ids(gallery, me, min_score=0.3) == [cat, owl]
    assert await ids(gallery, me, min_score=0.9) == []
    assert await ids(gallery, me, width=512) == [clip, owl]
    assert await ids(gallery, me, width=768, height=512) == [cat]
    assert await ids(gallery, me, min_cost_usd=Decimal("0.02")) == [fox]
    assert await ids(gallery, me, max_cost_usd=Decimal("0.02")) == [owl]
    assert await ids(gallery, me, min_cost_usd=Decimal("0.01"), max_cost_usd=Decimal("0.04")) == [
        owl,
        fox,
    ]
    # Someone else's clip of my fox does not count: only my clips are mine.
    assert await ids(gallery, me, has_video=True) == [cat]
    assert await ids(gallery, me, has_video=False) == [owl, fox]
    assert await ids(gallery, me, lora="inkfox") == [owl, fox]
    assert await ids(gallery, me, lora="owl_style") == [owl]
    assert await ids(gallery, me, ids=(fox, clip, their_fox)) == [clip, fox]
    assert await ids(gallery, me, text="fox", kept=True, model="flux-dev") == [fox]
    assert await ids(gallery, me, text="cat") == [clip, cat]

    # The same filters from a page's query string.
    query = {"q": "FOX", "kept": "1", "since": "2026-12-07", "until": "2026-12-07", "kind": ""}
    page = await gallery.page(me, GalleryFilters.from_query(query))
    assert [item.id for item in page.items] == [fox]
    query = {"since": "2026-12-10", "until": "2026-12-11", "kind": "image"}  # whole days
    page = await gallery.page(me, GalleryFilters.from_query(query))
    assert [item.id for item in page.items] == [cat, owl]

    # Tiles: a clip shows its poster; a tile's prompt falls back to what was sent.
    tiles = {item.id: item for item in (await gallery.page(me, GalleryFilters())).items}
    assert tiles[clip].kind == "video" and tiles[clip].seconds == 2.0
    assert tiles[clip].thumb_key != tiles[clip].media_key
    assert tiles[owl].prompt == "an owl in 100% cotton"
    assert tiles[fox].kept and not tiles[owl].kept
    assert tiles[fox].cost_usd == Decimal("0.04") and tiles[cat].cost_usd is None
    assert tiles[fox].created_at == NOW - timedelta(days=5)  # UTC, on both databases


# --------------------------------------------------------------------- search


async def search_fixture(make: Maker) -> tuple[Gallery, str, dict[str, str]]:
    me, other = await make.user("me"), await make.user("other")
    thread, theirs = await make.thread(me), await make.thread(other)
    prompts = {
        "fox": ("A Red Fox at night", "a red fox at night, oil painting"),
        "pct": ("", "an owl in 100% cotton"),
        "nopct": ("an owl in 100 cotton", ""),
        "under": ("an under_score cat", "an under_score cat"),
        "nounder": ("an underXscore cat", "an underXscore cat"),
        "sent": ("make it pop", "a lighthouse in a storm"),
    }
    made = {}
    for n, (name, (typed, sent)) in enumerate(prompts.items()):
        made[name] = await make.image(
            thread, me, prompt_typed=typed, prompt_sent=sent, created_at=NOW - timedelta(n)
        )
    made["theirs"] = await make.image(theirs, other, prompt_typed="a red fox at night")
    return Gallery(make.engine), me, made


async def expect_search_results(gallery: Gallery, me: str, made: dict[str, str]) -> None:
    async def found(text: str) -> set[str]:
        names = {v: k for k, v in made.items()}
        return {names[i] for i in await ids(gallery, me, text=text)}

    assert await found("red fox") == {"fox"}
    assert await found("RED FOX AT") == {"fox"}  # case does not matter
    assert await found("fox") == {"fox"}
    assert await found("lighthouse") == {"sent"}  # the prompt as sent counts too
    assert await found("% c") == {"pct"}  # `%` and `_` are literal
    assert await found("0% cotton") == {"pct"}
    assert await found("%") == {"pct"}
    assert await found("r_s") == {"under"}
    assert await found("_") == {"under"}
    assert await found("under_score") == {"under"}
    assert await found("owl in 100") == {"pct", "nopct"}
    assert await found("ox") == {"fox"}
    assert await found("pop\na") == set()  # not across the two prompts
    assert await found("zebra") == set()
    assert await found('"a"') == set()  # quotes mean nothing to the index


async def test_prompt_search(engine, make):  # noqa: F811
    gallery, me, made = await search_fixture(make)
    await expect_search_results(gallery, me, made)


async def test_prompt_search_walks_when_the_index_names_too_many(engine, make, monkeypatch):  # noqa: F811
    """SQLite reads the page from the index below a number of candidates, and walks the
    user's images above it; both give the same answer."""
    monkeypatch.setattr(gallery_search, "INDEX_CANDIDATES", 1)
    gallery, me, made = await search_fixture(make)
    await expect_search_results(gallery, me, made)


async def test_prompt_search_follows_edits_and_deletes(engine, make):  # noqa: F811
    gallery, me, made = await search_fixture(make)
    async with make.sessions.begin() as s:
        await s.execute(
            sa.update(Image).where(Image.id == made["fox"]).values(prompt_typed="a grey wolf")
        )
        await s.execute(
            sa.update(Image)
            .where(Image.id == made["sent"])
            .values(prompt_sent="a wolf in the snow")
        )
        await s.execute(sa.delete(Image).where(Image.id == made["under"]))
    assert await ids(gallery, me, text="grey wolf") == [made["fox"]]
    assert await ids(gallery, me, text="wolf") == [made["fox"], made["sent"]]
    assert await ids(gallery, me, text="lighthouse") == []
    assert await ids(gallery, me, text="under_score") == []
    assert await ids(gallery, me, text="red fox at") == [made["fox"]]  # still in what was sent


async def test_prompt_search_works_without_its_index(engine, make):  # noqa: F811
    """Where migration 0013 could not build the index (no pg_trgm, no FTS5), search still
    finds the same, unindexed, and says so in the log."""
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for trigger in ("images_search_insert", "images_search_update", "images_search_delete"):
                await conn.execute(sa.text(f"DROP TRIGGER {trigger}"))
            await conn.execute(sa.text("DROP TABLE image_search"))
            await conn.execute(sa.text("DROP TABLE image_search_docs"))
        else:
            await conn.execute(sa.text("DROP INDEX ix_images_prompt_typed_trgm"))
            await conn.execute(sa.text("DROP INDEX ix_images_prompt_sent_trgm"))
    gallery, me, made = await search_fixture(make)
    with capture_logs() as logs:
        await expect_search_results(gallery, me, made)
    assert [e["event"] for e in logs].count("gallery_search_unindexed") == 1


# ----------------------------------------------------------------- pagination


async def test_pages_cover_everything_once_newest_first(engine, make):  # noqa: F811
    me, other = await make.user("me"), await make.user("other")
    thread = await make.thread(me)
    theirs = await make.thread(other)
    made: list[tuple[datetime, str, str]] = []
    for n in range(45):
        # Threes share a time to the microsecond: the id breaks the tie, across kinds too.
        at = NOW - timedelta(minutes=n // 3)
        if n % 5 == 0:
            item = await make.video(thread, me, created_at=at, prompt_typed=f"clip {n} kite")
            made.append((at, item, "video"))
        else:
            item = await make.image(thread, me, created_at=at, prompt_typed=f"image {n} kite")
            made.append((at, item, "image"))
        await make.image(theirs, other, created_at=at, prompt_typed="a kite")
    made.sort(reverse=True)
    everything = [item for _, item, _ in made]
    images = [item for _, item, kind in made if kind == "image"]
    gallery = Gallery(engine)

    for filters, wanted in (
        (GalleryFilters(), everything),
        (GalleryFilters(text="kite"), everything),
        (GalleryFilters(kind="image"), images),
    ):
        seen: list[GalleryItem] = []
        cursor = None
        while True:
            page = await gallery.page(me, filters, cursor=cursor, limit=7)
            assert 0 < len(page.items) <= 7
            seen += page.items
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        # Newest first, each once, none missing, none of someone else's.
        assert [item.id for item in seen] == wanted

    # A full last page says there is no next one.
    page = await gallery.page(me, GalleryFilters(), limit=45)
    assert len(page.items) == 45 and page.next_cursor is None


FORGED_CURSORS = [
    "garbage",
    "!!!!",
    base64.urlsafe_b64encode(b"not|a|cursor").decode(),
    base64.urlsafe_b64encode(b"2026-12-12T12:00:00+00:00|x' OR 1=1 --").decode(),
    base64.urlsafe_b64encode(f"yesterday|{uuid.uuid4()}".encode()).decode(),
    base64.urlsafe_b64encode(f"2026-12-12T12:00:00|{uuid.uuid4()}".encode()).decode(),
    base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    "A" * 10_000,
]


async def test_a_forged_cursor_or_page_size_is_invalid_input(engine, make):  # noqa: F811
    me = await make.user("me")
    gallery = Gallery(engine)
    for cursor in FORGED_CURSORS:
        with pytest.raises(InvalidInput, match="^Invalid cursor"):
            await gallery.page(me, GalleryFilters(), cursor=cursor)
    for limit in (0, -1, 201, True, "10"):
        with pytest.raises(InvalidInput, match="^Invalid limit"):
            await gallery.page(me, GalleryFilters(), limit=limit)


# -------------------------------------------------------------- owner and detail


async def test_detail_has_the_full_record_and_only_for_its_owner(engine, make):  # noqa: F811
    me, other = await make.user("me"), await make.user("other")
    thread = await make.thread(me, "Lanterns")
    parent = await make.image(thread, me, created_at=NOW - timedelta(1))
    image = await make.image(
        thread,
        me,
        parent_id=parent,
        prompt_typed="a lantern",
        prompt_sent="a paper lantern, warm light",
        parameters={"request": {"size": "1024x1024"}, "lineage": {"style": "photo"}},
        seed=42,
        duration_ms=1234,
        style="photo",
        lora_names="|inkfox|",
        cost_usd=Decimal("0.040000"),
    )
    clip = await make.video(thread, me, source_image_id=image, prompt_sent="slow zoom")
    theirs = await make.image(await make.thread(other), other)
    async with make.sessions.begin() as s:
        curation = Curation(
            id=str(uuid.uuid4()), thread_id=thread, user_id=me, prompt="lanterns", style="photo"
        )
        s.add(curation)
        await s.flush()
        s.add(
            CurationCandidate(
                curation_id=curation.id,
                image_id=image,
                rank=1,
                combined=0.71,
                verdict="kept",
                reason="best",
            )
        )
        s.add(
            ImageScore(
                image_id=image,
                curation_id=curation.id,
                criterion="clip",
                value=0.31,
                score=0.71,
                passed=True,
                reason="matches",
                created_at=NOW,
            )
        )
    gallery = Gallery(engine)

    detail = await gallery.detail(me, image)
    assert detail.item.id == image and detail.item.kind == "image"
    assert (detail.prompt_typed, detail.prompt_sent) == ("a lantern", "a paper lantern, warm light")
    assert detail.parameters["request"] == {"size": "1024x1024"}
    assert (detail.seed, detail.duration_ms, detail.parent_id) == (42, 1234, parent)
    assert detail.source_image_id is None
    assert detail.scores == [
        {
            "criterion": "clip",
            "value": 0.31,
            "score": 0.71,
            "passed": True,
            "reason": "matches",
            "curation_id": curation.id,
        }
    ]
    assert detail.curations == [
        {
            "curation_id": curation.id,
            "rank": 1,
            "combined": 0.71,
            "verdict": "kept",
            "reason": "best",
            "prompt": "lanterns",
            "style": "photo",
        }
    ]
    assert (detail.loras, detail.style, detail.thread_name) == (["inkfox"], "photo", "Lanterns")

    video = await gallery.detail(me, clip.upper())  # ids are read without regard to case
    assert video.item.kind == "video" and video.source_image_id == image
    assert (video.prompt_sent, video.scores, video.loras) == ("slow zoom", [], [])

    for stranger, item in ((other, image), (other, clip), (me, theirs)):
        with pytest.raises(NotFound):
            await gallery.detail(stranger, item)
    for made_up in (str(uuid.uuid4()), "x' OR '1'='1", "../etc", ""):
        with pytest.raises(NotFound):
            await gallery.detail(me, made_up)

    # Tiles by id: in the order asked, others' and unknown dropped.
    items = await gallery.items(me, [clip, theirs, "nonsense", image, str(uuid.uuid4()), clip])
    assert [i.id for i in items] == [clip, image]
    assert await gallery.items(other, [clip, image]) == []
    assert [i.id for i in await ids_page(gallery, other)] == [theirs]


async def ids_page(gallery: Gallery, user_id: str) -> list[GalleryItem]:
    return (await gallery.page(user_id, GalleryFilters())).items


# ------------------------------------------------------------ query validation


def test_filters_from_a_query_string():
    f = GalleryFilters.from_query(
        {
            "q": "  red fox ",
            "model": "flux-dev",
            "backend": "replicate",
            "style": "photo",
            "since": "2026-01-05",
            "until": "2026-01-31",
            "kept": "1",
            "min_score": "0.5",
            "width": "1024",
            "height": "768",
            "min_cost": "0.01",
            "max_cost": "$0.04",
            "kind": "image",
            "has_video": "0",
            "lora": "inkfox",
            "ids": f"{'A' * 8}-aaaa-aaaa-aaaa-{'a' * 12}, ",
            "cursor": "left to the caller",
        }
    )
    assert f == GalleryFilters(
        text="red fox",
        model="flux-dev",
        backend="replicate",
        style="photo",
        since=datetime(2026, 1, 5, tzinfo=UTC),
        until=datetime(2026, 2, 1, tzinfo=UTC),  # the whole of the 31st
        kept=True,
        min_score=0.5,
        width=1024,
        height=768,
        min_cost_usd=Decimal("0.01"),
        max_cost_usd=Decimal("0.04"),
        kind="image",
        has_video=False,
        lora="inkfox",
        ids=(f"{'a' * 8}-aaaa-aaaa-aaaa-{'a' * 12}",),
    )
    assert GalleryFilters.from_query({"q": "", "kept": " ", "width": ""}) == GalleryFilters()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"q": "x" * 201}, "q"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-02-01", "until": "2026-01-01"}, "until"),
        ({"kept": "maybe"}, "kept"),
        ({"has_video": "2"}, "has_video"),
        ({"min_score": "high"}, "min_score"),
        ({"min_score": "nan"}, "min_score"),
        ({"width": "-5"}, "width"),
        ({"width": "0"}, "width"),
        ({"height": "1e3"}, "height"),
        ({"height": "²"}, "height"),
        ({"min_cost": "cheap"}, "min_cost"),
        ({"max_cost": "-1"}, "max_cost"),
        ({"max_cost": "Infinity"}, "max_cost"),
        ({"min_cost": "0.5", "max_cost": "0.1"}, "max_cost"),
        ({"kind": "gif"}, "kind"),
        ({"kind": "video", "kept": "1"}, "kind"),
        ({"lora": "a|b"}, "lora"),
        ({"model": "m" * 129}, "model"),
        ({"ids": "1,2"}, "ids"),
        ({"ids": ",".join(str(uuid.uuid4()) for _ in range(501))}, "ids"),
    ],
)
def test_a_bad_query_parameter_is_named(query, named):
    with pytest.raises(InvalidInput, match=rf"^Invalid {named}\b"):
        GalleryFilters.from_query(query)


def test_filters_made_directly_are_checked_too():
    with pytest.raises(InvalidInput, match="^Invalid kind"):
        GalleryFilters(kind="gif")
    with pytest.raises(InvalidInput, match="^Invalid since"):
        GalleryFilters(since=datetime(2026, 1, 1))  # no time zone: which midnight?
    with pytest.raises(InvalidInput, match="^Invalid min_cost"):
        GalleryFilters(min_cost_usd=0.5)  # type: ignore[arg-type]
