"""Curations and image scores: what was ranked, how, what was kept, and who decided.

Stored so a resumed thread shows the same verdicts, the agent knows which candidate is
"the third one", and a user's overruling survives. Every read and write is scoped to
the user, like image lineage.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import InvalidInput, NotFound
from memory.db import for_reads, session_factory, write_session
from memory.ids import require_uuid
from memory.models import Curation, CurationCandidate, Image, ImageScore, new_id, utcnow


@dataclass(frozen=True)
class StoredScore:
    criterion: str
    value: float
    score: float
    passed: bool | None
    reason: str


@dataclass(frozen=True)
class CandidateRecord:
    image_id: str
    rank: int
    combined: float
    verdict: str  # kept | rejected
    reason: str
    decided_by: str  # scores | user
    scores: list[StoredScore]


@dataclass(frozen=True)
class CurationRecord:
    id: str
    thread_id: str
    prompt: str
    style: str | None
    weights: dict[str, float]
    keep: int
    created_at: datetime
    candidates: list[CandidateRecord]

    @property
    def kept(self) -> list[CandidateRecord]:
        return [c for c in self.candidates if c.verdict == "kept"]


class CurationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reads = for_reads(engine)
        self._sessions = session_factory(engine)

    async def _owned_images(
        self, session: AsyncSession, image_ids: list[str], user_id: str
    ) -> None:
        found = set(
            (
                await session.scalars(
                    select(Image.id).where(Image.id.in_(image_ids), Image.user_id == user_id)
                )
            ).all()
        )
        missing = [i for i in image_ids if i not in found]
        if missing:
            raise NotFound(f"No image with id {missing[0]} in your conversations.")

    async def record(
        self,
        *,
        thread_id: str,
        user_id: str,
        message_id: str | None,
        prompt: str,
        style: str | None,
        weights: dict[str, float],
        keep: int,
        candidates: list[CandidateRecord],
    ) -> CurationRecord:
        """The curation, its candidates and every score, in one transaction."""
        thread_id = require_uuid(thread_id, "thread id")
        curation_id = new_id()
        async with write_session(self._sessions) as session:
            await self._owned_images(session, [c.image_id for c in candidates], user_id)
            session.add(
                Curation(
                    id=curation_id,
                    thread_id=thread_id,
                    user_id=user_id,
                    message_id=message_id,
                    prompt=prompt,
                    style=style,
                    weights=weights,
                    keep=keep,
                )
            )
            await session.flush()
            for candidate in candidates:
                session.add(
                    CurationCandidate(
                        curation_id=curation_id,
                        image_id=candidate.image_id,
                        rank=candidate.rank,
                        combined=candidate.combined,
                        verdict=candidate.verdict,
                        reason=candidate.reason,
                        decided_by=candidate.decided_by,
                    )
                )
                session.add_all(self._score_rows(candidate.image_id, curation_id, candidate.scores))
            if style:
                # The gallery filters by style; a candidate learns its style only now.
                await session.execute(
                    update(Image)
                    .where(Image.id.in_([c.image_id for c in candidates]), Image.style.is_(None))
                    .values(style=style)
                )
        return await self.get(curation_id, user_id)

    @staticmethod
    def _score_rows(
        image_id: str, curation_id: str | None, scores: list[StoredScore]
    ) -> list[ImageScore]:
        return [
            ImageScore(
                image_id=image_id,
                curation_id=curation_id,
                criterion=s.criterion,
                value=float(s.value),
                score=float(s.score),
                passed=s.passed,
                reason=s.reason,
            )
            for s in scores
        ]

    async def record_scores(self, image_id: str, user_id: str, scores: list[StoredScore]) -> None:
        """Scores from a stand-alone quality check (no curation)."""
        image_id = require_uuid(image_id, "image id")
        async with write_session(self._sessions) as session:
            await self._owned_images(session, [image_id], user_id)
            session.add_all(self._score_rows(image_id, None, scores))

    async def get(self, curation_id: str, user_id: str) -> CurationRecord:
        async with self._sessions() as session:
            curation = await session.scalar(
                select(Curation).where(Curation.id == curation_id, Curation.user_id == user_id)
            )
            if curation is None:
                raise NotFound("No such curation.")
            rows = (
                await session.scalars(
                    select(CurationCandidate)
                    .where(CurationCandidate.curation_id == curation_id)
                    .order_by(CurationCandidate.rank)
                )
            ).all()
            scores = (
                await session.scalars(
                    select(ImageScore)
                    .where(ImageScore.curation_id == curation_id)
                    .order_by(ImageScore.id)
                )
            ).all()
        by_image: dict[str, list[StoredScore]] = {}
        for s in scores:
            by_image.setdefault(s.image_id, []).append(
                StoredScore(s.criterion, s.value, s.score, s.passed, s.reason)
            )
        return CurationRecord(
            id=curation.id,
            thread_id=curation.thread_id,
            prompt=curation.prompt,
            style=curation.style,
            weights=dict(curation.weights or {}),
            keep=curation.keep,
            created_at=curation.created_at,
            candidates=[
                CandidateRecord(
                    image_id=r.image_id,
                    rank=r.rank,
                    combined=r.combined,
                    verdict=r.verdict,
                    reason=r.reason,
                    decided_by=r.decided_by,
                    scores=by_image.get(r.image_id, []),
                )
                for r in rows
            ],
        )

    async def latest_with_image(self, image_id: str, user_id: str) -> CurationRecord:
        image_id = require_uuid(image_id, "image id")
        async with self._sessions() as session:
            curation_id = await session.scalar(
                select(Curation.id)
                .join(CurationCandidate, CurationCandidate.curation_id == Curation.id)
                .where(CurationCandidate.image_id == image_id, Curation.user_id == user_id)
                .order_by(Curation.created_at.desc())
                .limit(1)
            )
        if curation_id is None:
            raise InvalidInput(
                "That image was not a candidate in any curation; curate_images ranks images."
            )
        return await self.get(curation_id, user_id)

    async def overrule(self, image_id: str, user_id: str) -> tuple[CurationRecord, str | None]:
        """Keep `image_id` by the user's choice; returns the curation and who it displaced.

        When the curation already keeps as many as it should, the lowest-ranked image
        kept by the scores gives way (an image the user chose is never displaced).
        """
        curation = await self.latest_with_image(image_id, user_id)
        chosen = next(c for c in curation.candidates if c.image_id == image_id)
        if chosen.verdict == "kept":
            return curation, None
        displaced: str | None = None
        kept = curation.kept
        if len(kept) >= curation.keep:
            by_scores = [c for c in kept if c.decided_by == "scores"]
            if not by_scores:
                raise InvalidInput(
                    f"You already chose {len(kept)} image(s) to keep in this curation, its "
                    f"limit; say which to drop first."
                )
            displaced = max(by_scores, key=lambda c: c.rank).image_id
        now = utcnow()
        async with write_session(self._sessions) as session:
            key = CurationCandidate.curation_id == curation.id
            await session.execute(
                update(CurationCandidate)
                .where(key, CurationCandidate.image_id == image_id)
                .values(
                    verdict="kept", decided_by="user", reason="Kept by your choice.", updated_at=now
                )
            )
            if displaced:
                await session.execute(
                    update(CurationCandidate)
                    .where(key, CurationCandidate.image_id == displaced)
                    .values(
                        verdict="rejected",
                        decided_by="user",
                        reason=f"Replaced by your choice of image {image_id[:8]}.",
                        updated_at=now,
                    )
                )
        return await self.get(curation.id, user_id), displaced

    async def verdicts_for_thread(
        self, thread_id: str, user_id: str
    ) -> dict[str, tuple[str, int, str, float]]:
        """image id -> (verdict, rank, curation id, combined) from each image's latest curation."""
        thread_id = require_uuid(thread_id, "thread id")
        params = {"thread_id": thread_id, "user_id": user_id}
        async with self._reads.connect() as conn:  # read on every agent turn: no ORM
            rows = (await conn.execute(_verdicts_query(), params)).all()
        return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}

    async def scores_for_image(self, image_id: str, user_id: str) -> list[StoredScore]:
        """The newest score of each criterion for an image."""
        image_id = require_uuid(image_id, "image id")
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(ImageScore)
                    .join(Image, Image.id == ImageScore.image_id)
                    .where(ImageScore.image_id == image_id, Image.user_id == user_id)
                    .order_by(ImageScore.id)
                )
            ).all()
        newest = {r.criterion: r for r in rows}
        return [
            StoredScore(r.criterion, r.value, r.score, r.passed, r.reason) for r in newest.values()
        ]


@functools.cache
def _verdicts_query() -> Any:
    """Every candidate's verdict in a user's thread, oldest curation first: read on every
    agent turn, so built once (building it per call cost more than running it)."""
    return (
        select(
            CurationCandidate.image_id,
            CurationCandidate.verdict,
            CurationCandidate.rank,
            Curation.id,
            CurationCandidate.combined,
        )
        .join(Curation, Curation.id == CurationCandidate.curation_id)
        .where(
            Curation.thread_id == bindparam("thread_id"), Curation.user_id == bindparam("user_id")
        )
        .order_by(Curation.created_at)
    )
