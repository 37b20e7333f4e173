"""The gallery: every image and clip a user made, newest first, narrowed and searched.

One grid across all of the user's conversations, images and clips together, in the order
of (created_at, id) descending, paged by an opaque keyset cursor: a page costs the same
at the millionth image as at the first, and files made while someone scrolls never shift
a page (no offsets). Each kind is read from its own table with the index
(user_id, created_at, id) and the two pages are merged.

Every read names the user first: another user's id, or one made up, is simply not found,
and a forged cursor or filter is an InvalidInput, never a query.

Filters are `GalleryFilters` (memory/gallery_filters.py); prompt text search is
`PromptSearch` (memory/gallery_search.py). The grid's rows read only the columns a tile
shows; the detail reads the rest (parameters, scores, verdicts).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql import ColumnElement

from core.errors import InvalidInput, NotFound
from memory.db import session_factory
from memory.gallery_filters import GalleryFilters
from memory.gallery_search import PromptSearch, escape_like
from memory.ids import is_uuid, require_uuid
from memory.image_facets import lora_list
from memory.models import (
    Batch,
    Curation,
    CurationCandidate,
    Image,
    ImageScore,
    Thread,
    Video,
)

__all__ = ["Gallery", "GalleryDetail", "GalleryFilters", "GalleryItem", "GalleryPage"]

PAGE_DEFAULT = 60
PAGE_MAX = 200
_CURSOR_MAX = 120  # characters: an ISO time and a UUID, base64


@dataclass(frozen=True)
class GalleryItem:
    """One tile of the grid: enough to show it and link to it."""

    id: str
    kind: str  # "image" | "video"
    thread_id: str
    media_key: str
    thumb_key: str  # an image: its own file; a clip: its poster frame
    mime: str
    prompt: str  # prompt_typed, or prompt_sent when nothing was typed
    model: str
    backend: str
    width: int
    height: int
    cost_usd: Decimal | None
    created_at: datetime  # UTC
    kept: bool
    seconds: float | None = None  # clips


@dataclass(frozen=True)
class GalleryPage:
    items: list[GalleryItem]
    next_cursor: str | None  # None: this is the last page


@dataclass(frozen=True)
class GalleryDetail:
    """The full record of one item: how it was made, what it cost, how it was judged."""

    item: GalleryItem
    prompt_typed: str
    prompt_sent: str
    parameters: dict[str, Any]
    seed: int | None
    duration_ms: int | None
    parent_id: str | None  # images
    source_image_id: str | None  # clips
    scores: list[dict[str, Any]]  # {"criterion","value","score","passed","reason","curation_id"}
    curations: list[dict[str, Any]]  # {"curation_id","rank","combined","verdict","reason",
    #                                   "prompt","style"}
    loras: list[str]
    style: str | None
    thread_name: str | None


# What a tile shows: never `parameters`, which can be kilobytes a row.
_IMAGE_TILE = (
    Image.id,
    Image.thread_id,
    Image.media_key,
    Image.mime,
    Image.prompt_typed,
    Image.prompt_sent,
    Image.model,
    Image.backend,
    Image.width,
    Image.height,
    Image.cost_usd,
    Image.created_at,
    Image.kept_at,
)
_VIDEO_TILE = (
    Video.id,
    Video.thread_id,
    Video.media_key,
    Video.poster_key,
    Video.mime,
    Video.prompt_typed,
    Video.prompt_sent,
    Video.model,
    Video.backend,
    Video.width,
    Video.height,
    Video.cost_usd,
    Video.created_at,
    Video.seconds,
)


class Gallery:
    """Owner-scoped reads of the gallery: pages of tiles, one item's detail, tiles by id."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._sessions = session_factory(engine)
        self._search = PromptSearch(engine)

    async def page(
        self,
        user_id: str,
        filters: GalleryFilters,
        cursor: str | None = None,
        limit: int = PAGE_DEFAULT,
    ) -> GalleryPage:
        """The user's newest `limit` items matching `filters`, after `cursor` if given."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= PAGE_MAX:
            raise InvalidInput(f"Invalid limit: expected a whole number from 1 to {PAGE_MAX}.")
        after = decode_cursor(cursor) if cursor else None
        items: list[GalleryItem] = []
        async with self._sessions() as session:
            if not filters.videos_only:
                items += await self._image_page(session, user_id, filters, after, limit + 1)
            if not filters.images_only:
                items += await self._video_page(session, user_id, filters, after, limit + 1)
        items.sort(key=lambda item: (item.created_at, item.id), reverse=True)
        more = len(items) > limit
        items = items[:limit]
        return GalleryPage(items=items, next_cursor=encode_cursor(items[-1]) if more else None)

    async def detail(self, user_id: str, item_id: str) -> GalleryDetail:
        """The full record of the user's image or clip; anyone else's is not found."""
        if not is_uuid(item_id):
            raise NotFound("No such image or clip in your gallery.")
        item_id = require_uuid(item_id)
        async with self._sessions() as session:
            found = (
                await session.execute(
                    select(Image, Thread.name)
                    .outerjoin(Thread, Thread.id == Image.thread_id)
                    .where(Image.id == item_id, Image.user_id == user_id)
                )
            ).first()
            if found is not None:
                return await self._image_detail(session, user_id, *found)
            found = (
                await session.execute(
                    select(Video, Thread.name)
                    .outerjoin(Thread, Thread.id == Video.thread_id)
                    .where(Video.id == item_id, Video.user_id == user_id)
                )
            ).first()
        if found is None:
            raise NotFound("No such image or clip in your gallery.")
        video, thread_name = found
        return GalleryDetail(
            item=_video_item(video),
            prompt_typed=video.prompt_typed,
            prompt_sent=video.prompt_sent or "",
            parameters=dict(video.parameters or {}),
            seed=video.seed,
            duration_ms=video.duration_ms,
            parent_id=None,
            source_image_id=video.source_image_id,
            scores=[],
            curations=[],
            loras=[],
            style=None,
            thread_name=thread_name,
        )

    async def items(self, user_id: str, ids: Sequence[str]) -> list[GalleryItem]:
        """The user's items with these ids, in the order given; others' and unknown dropped."""
        wanted = list(dict.fromkeys(require_uuid(i) for i in ids if is_uuid(i)))
        found: dict[str, GalleryItem] = {}
        async with self._sessions() as session:
            for start in range(0, len(wanted), PAGE_MAX):
                chunk = wanted[start : start + PAGE_MAX]
                # Looked up by id alone, the owner checked on each row: given the owner
                # too, SQLite's planner walks the owner's index (100 ms at 100,000 images).
                images = await session.execute(
                    select(*_IMAGE_TILE, Image.user_id.label("owner")).where(Image.id.in_(chunk))
                )
                found.update((row.id, _image_item(row)) for row in images if row.owner == user_id)
                missing = [i for i in chunk if i not in found]
                if missing:
                    videos = await session.execute(
                        select(*_VIDEO_TILE, Video.user_id.label("owner")).where(
                            Video.id.in_(missing)
                        )
                    )
                    found.update(
                        (row.id, _video_item(row)) for row in videos if row.owner == user_id
                    )
        return [found[i] for i in wanted if i in found]

    # ------------------------------------------------------------------ the grid

    async def _image_page(
        self,
        session: AsyncSession,
        user_id: str,
        f: GalleryFilters,
        after: tuple[datetime, str] | None,
        n: int,
    ) -> list[GalleryItem]:
        where: list[ColumnElement[bool]] = [Image.user_id == user_id]
        where += _common(Image, f, after)
        if f.style is not None:
            where.append(Image.style == f.style)
        if f.kept is not None:
            where.append(Image.kept_at.is_not(None) if f.kept else Image.kept_at.is_(None))
        if f.min_score is not None:
            where.append(
                exists().where(
                    CurationCandidate.image_id == Image.id,
                    CurationCandidate.combined >= f.min_score,
                )
            )
        query = select(*_IMAGE_TILE)
        if f.has_video:
            # Driven from the clips (a user has far fewer than images): a probe of every
            # image for a clip walked all of them when clips were rare.
            sources = (
                select(Video.source_image_id)
                .where(Video.user_id == user_id, Video.source_image_id.is_not(None))
                .distinct()
                .subquery()
            )
            query = query.join(sources, sources.c.source_image_id == Image.id)
        elif f.has_video is False:
            where.append(
                ~exists().where(Video.source_image_id == Image.id, Video.user_id == user_id)
            )
        if f.lora is not None:
            name = escape_like(f.lora.strip().lower())
            where.append(Image.lora_names.like(f"%|{name}|%", escape="\\"))
        where += _origin(user_id, f)
        if f.text is not None:
            where += await self._search.image_match(session, user_id, f.text)
        rows = await session.execute(
            query.where(*where).order_by(Image.created_at.desc(), Image.id.desc()).limit(n)
        )
        return [_image_item(row) for row in rows]

    async def _video_page(
        self,
        session: AsyncSession,
        user_id: str,
        f: GalleryFilters,
        after: tuple[datetime, str] | None,
        n: int,
    ) -> list[GalleryItem]:
        where: list[ColumnElement[bool]] = [Video.user_id == user_id]
        where += _common(Video, f, after)
        if f.text is not None:
            where.append(self._search.video_match(f.text))
        rows = await session.execute(
            select(*_VIDEO_TILE)
            .where(*where)
            .order_by(Video.created_at.desc(), Video.id.desc())
            .limit(n)
        )
        return [_video_item(row) for row in rows]

    # ---------------------------------------------------------------- the detail

    async def _image_detail(
        self, session: AsyncSession, user_id: str, image: Image, thread_name: str | None
    ) -> GalleryDetail:
        scores = (
            await session.scalars(
                select(ImageScore)
                .where(ImageScore.image_id == image.id)
                .order_by(ImageScore.created_at, ImageScore.id)
            )
        ).all()
        curations = (
            await session.execute(
                select(CurationCandidate, Curation)
                .join(Curation, Curation.id == CurationCandidate.curation_id)
                .where(CurationCandidate.image_id == image.id, Curation.user_id == user_id)
                .order_by(Curation.created_at, Curation.id)
            )
        ).all()
        return GalleryDetail(
            item=_image_item(image),
            prompt_typed=image.prompt_typed,
            prompt_sent=image.prompt_sent,
            parameters=dict(image.parameters or {}),
            seed=image.seed,
            duration_ms=image.duration_ms,
            parent_id=image.parent_id,
            source_image_id=None,
            scores=[
                {
                    "criterion": s.criterion,
                    "value": s.value,
                    "score": s.score,
                    "passed": s.passed,
                    "reason": s.reason,
                    "curation_id": s.curation_id,
                }
                for s in scores
            ],
            curations=[
                {
                    "curation_id": curation.id,
                    "rank": candidate.rank,
                    "combined": candidate.combined,
                    "verdict": candidate.verdict,
                    "reason": candidate.reason,
                    "prompt": curation.prompt,
                    "style": curation.style,
                }
                for candidate, curation in curations
            ],
            loras=lora_list(image.lora_names),
            style=image.style,
            thread_name=thread_name,
        )


def _common(
    model: type[Image] | type[Video], f: GalleryFilters, after: tuple[datetime, str] | None
) -> list[ColumnElement[bool]]:
    """Conditions both kinds share: what was used, when, how big, what it cost, which."""
    where: list[ColumnElement[bool]] = []
    if after is not None:
        at, last_id = after
        where.append(
            tuple_(model.created_at, model.id)
            < tuple_(literal(at, model.created_at.type), literal(last_id, model.id.type))
        )
    if f.model is not None:
        where.append(model.model == f.model)
    if f.backend is not None:
        where.append(model.backend == f.backend)
    if f.since is not None:
        where.append(model.created_at >= f.since.astimezone(UTC))
    if f.until is not None:
        where.append(model.created_at < f.until.astimezone(UTC))
    if f.width is not None:
        where.append(model.width == f.width)
    if f.height is not None:
        where.append(model.height == f.height)
    if f.min_cost_usd is not None:
        where.append(model.cost_usd >= f.min_cost_usd)
    if f.max_cost_usd is not None:
        where.append(model.cost_usd <= f.max_cost_usd)
    if f.ids is not None:
        where.append(model.id.in_(f.ids))
    return where


def _origin(user_id: str, f: GalleryFilters) -> list[ColumnElement[bool]]:
    """Which batch, schedule or source an image came from (images.batch_id, batches).

    A batch or schedule is looked up among the user's own batches, so another user's
    id simply matches nothing. A schedule's runs are batches naming it.
    """
    where: list[ColumnElement[bool]] = []
    mine = select(Batch.id).where(Batch.user_id == user_id)
    scheduled = mine.where(Batch.schedule_id.is_not(None))
    if f.batch_id is not None:
        where.append(Image.batch_id.in_(mine.where(Batch.id == f.batch_id)))
    if f.schedule_id is not None:
        where.append(Image.batch_id.in_(mine.where(Batch.schedule_id == f.schedule_id)))
    if f.origin == "chat":
        where.append(Image.batch_id.is_(None))
    elif f.origin == "schedule":
        where.append(Image.batch_id.in_(scheduled))
    elif f.origin == "batch":
        where += [Image.batch_id.is_not(None), Image.batch_id.not_in(scheduled)]
    return where


def _utc(moment: datetime) -> datetime:
    """SQLite hands times back without their zone; every stored time is UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _image_item(row: Any) -> GalleryItem:
    return _item(row, "image", thumb_key=row.media_key, kept=row.kept_at is not None)


def _video_item(row: Any) -> GalleryItem:
    return _item(row, "video", thumb_key=row.poster_key, kept=False, seconds=row.seconds)


def _item(row: Any, kind: str, **own: Any) -> GalleryItem:
    """A tile from the columns images and clips share (MediaLineage) and the kind's own."""
    return GalleryItem(
        id=row.id,
        kind=kind,
        thread_id=row.thread_id,
        media_key=row.media_key,
        mime=row.mime,
        prompt=row.prompt_typed or row.prompt_sent or "",
        model=row.model,
        backend=row.backend,
        width=row.width,
        height=row.height,
        cost_usd=row.cost_usd,
        created_at=_utc(row.created_at),
        **own,
    )


# ---------------------------------------------------------------------- cursor


def encode_cursor(item: GalleryItem) -> str:
    """The opaque position after `item`: its time and id, base64 for a URL."""
    raw = f"{item.created_at.astimezone(UTC).isoformat()}|{item.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) a cursor names; anything not made by `encode_cursor` is refused."""
    invalid = InvalidInput("Invalid cursor: start again from the first page.")
    if not isinstance(cursor, str) or len(cursor) > _CURSOR_MAX:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, item_id = raw.split("|")
        at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if at.tzinfo is None or not is_uuid(item_id):
        raise invalid
    return at.astimezone(UTC), require_uuid(item_id)
