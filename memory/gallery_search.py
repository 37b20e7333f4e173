"""Prompt text search for the gallery: a substring of what was typed or sent, from an index.

The match is the same on both databases, and the same with or without an index: a
case-insensitive substring of `prompt_typed` or `prompt_sent`, `%` and `_` literal.
Migration 0013 indexes it; how each database uses the index:

- PostgreSQL: `ILIKE '%q%'` on the two columns, which the `pg_trgm` GIN indexes serve
  for q of 3+ characters. Its planner misjudges how many of one user's images match
  (it counts everyone's), so, as on SQLite, the user's matches are first read through
  the indexes, up to a cap: below it the page is read from those, above it the user's
  images are walked newest first (cheap when many match).
- SQLite: the FTS5 trigram index is first asked how
  many of the user's images hold the trigrams of q (reading stops at
  `INDEX_CANDIDATES`): below that, the page is read from those images, each
  confirmed by LIKE (the index says only that the trigrams occur, not together); above
  it, the walk. A search under three characters has no trigram: walk.

The user's scope comes first: the index's documents carry their owner, and the count
and the candidates are the user's own, so someone else's images never weigh in.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql import ColumnElement, column, table

from core.logging_setup import get_logger
from memory.models import Image, Video

log = get_logger(__name__)

TRIGRAM = 3  # a shorter search has no trigram for an index to look up
INDEX_CANDIDATES = 1_000
# The SQLite index (migration 0013): FTS5 `image_search` over `image_search_docs`.
_DOCS = table("image_search_docs", column("id"), column("image_id"), column("user_id"))
_FTS = table("image_search", column("rowid"), column("image_search"))


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_trigrams(search: str) -> str:
    """An FTS5 query for the documents holding trigrams that cover `search`, each quoted.

    Every third trigram and the last, not all of them: each is a list of documents to
    merge, and common ones are long; a document holding the covering ones but not the
    search is weeded out by LIKE anyway.
    """
    starts = [*range(0, len(search) - TRIGRAM + 1, TRIGRAM), len(search) - TRIGRAM]
    trigrams = dict.fromkeys(search[i : i + TRIGRAM] for i in starts)
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in trigrams)


def _contains(column: Any, search: str, dialect: str) -> ColumnElement[bool]:
    """Case-insensitive substring, `%` and `_` literal. SQLite's LIKE already ignores
    ASCII case (as its lower() does, and no more), so it is spared lower() on each row."""
    pattern = f"%{escape_like(search)}%"
    if dialect == "sqlite":
        return column.like(pattern, escape="\\")
    return column.ilike(pattern, escape="\\")


class PromptSearch:
    """Conditions on `images` for a prompt search, using the index where there is one."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._dialect = engine.dialect
        self._indexed: bool | None = None  # known after the first search

    def video_match(self, search: str) -> ColumnElement[bool]:
        """Clips are few beside images and have no index: LIKE on the user's clips."""
        return or_(
            _contains(Video.prompt_typed, search, self._dialect.name),
            _contains(Video.prompt_sent, search, self._dialect.name),
        )

    async def image_match(
        self, session: AsyncSession, user_id: str, search: str
    ) -> list[ColumnElement[bool]]:
        """Conditions, all to hold, for the user's images whose prompts hold `search`."""
        confirm = or_(
            _contains(Image.prompt_typed, search, self._dialect.name),
            _contains(Image.prompt_sent, search, self._dialect.name),
        )
        if not await self._has_index(session):
            return [confirm]
        if len(search) < TRIGRAM or self._dialect.name not in ("sqlite", "postgresql"):
            return [confirm]
        if self._dialect.name == "postgresql":
            candidates = await _postgres_candidates(session, user_id, confirm)
        else:
            # Read once, not as a subquery: the page's query would match them again.
            candidates = (
                await session.scalars(
                    select(_DOCS.c.image_id)
                    .select_from(_FTS.join(_DOCS, _DOCS.c.id == _FTS.c.rowid))
                    .where(
                        _FTS.c.image_search.match(fts_trigrams(search)),
                        _DOCS.c.user_id == user_id,
                    )
                    .limit(INDEX_CANDIDATES)
                )
            ).all()
        if len(candidates) >= INDEX_CANDIDATES:
            return [confirm]
        return [Image.id.in_(candidates), confirm]

    async def _has_index(self, session: AsyncSession) -> bool:
        """Whether migration 0013 could build the index here; a warning once if not."""
        if self._indexed is None:
            if self._dialect.name == "sqlite":
                probe = "SELECT count(*) FROM sqlite_master WHERE name = 'image_search'"
            elif self._dialect.name == "postgresql":
                probe = (
                    "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                    "AND indexname = 'ix_images_prompt_typed_trgm'"
                )
            else:
                probe = "SELECT 0"
            self._indexed = bool(await session.scalar(text(probe)))
            if not self._indexed:
                log.warning(
                    "gallery_search_unindexed",
                    database=self._dialect.name,
                    effect="gallery prompt search reads every image of the user",
                )
        return self._indexed


async def _postgres_candidates(
    session: AsyncSession, user_id: str, confirm: ColumnElement[bool]
) -> list[str]:
    """The user's matching images read through the trigram indexes, up to the cap.

    The planner, left alone, may walk the user's images newest first and test each one
    (cheap when many match, a full walk when few do: 800 ms at 100,000 images for a word
    other users use often). Plain and ordered index scans are turned off for this one
    read, so it goes through the trigram indexes' bitmaps; the cap stops it early when
    many match, and then the page walks instead.
    """
    await session.execute(text("SET LOCAL enable_indexscan = off"))
    await session.execute(text("SET LOCAL enable_seqscan = off"))
    try:
        return list(
            (
                await session.scalars(
                    select(Image.id)
                    .where(Image.user_id == user_id, confirm)
                    .limit(INDEX_CANDIDATES)
                )
            ).all()
        )
    finally:
        await session.execute(text("SET LOCAL enable_indexscan = on"))
        await session.execute(text("SET LOCAL enable_seqscan = on"))
