"""An image's family, as the gallery's lineage view draws it: where it came from, what came of it.

The database already records every link: `images.parent_id` (an edit, variations, a fork,
a reuse), the operation in `parameters["lineage"]`, curations in `curation_candidates`,
clips in `videos.source_image_id`, and the images a LoRA was trained on in the dataset
manifest its row keeps (`loras.dataset["images"][i]["source_id"]`, tools/train_lora.py).
This module only walks those links: up the parent chain to the root, then down the whole
family below it, then out to the curations, clips and LoRAs that touch it.

Every query is scoped to the user, so an id from someone else's gallery is not found and
the walk can never step into another user's rows. A family is capped (`MAX_NODES`): the
focus's own chain and descendants are kept first, and `truncated` says something was left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import NotFound
from memory.db import session_factory
from memory.ids import is_uuid
from memory.models import Curation, CurationCandidate, Image, LoraModel, Video

MAX_NODES = 200  # images, clips, curations and LoRAs together
_MAX_DEPTH = 200  # parent links followed up from the focus (a guard against a cycle)
_IN_BATCH = 500  # ids per IN (...) clause
_LABEL = 80  # characters of a prompt shown on a node

# The image columns a node needs (not the file, not the whole record).
_IMAGE_COLUMNS = (
    Image.id,
    Image.parent_id,
    Image.prompt_typed,
    Image.prompt_sent,
    Image.backend,
    Image.parameters,
    Image.media_key,
    Image.created_at,
)


@dataclass(frozen=True)
class LineageNode:
    id: str
    kind: str  # image | video | curation | lora
    label: str
    # How it was made: generate, edit, variations, fork, refine, curation candidate,
    # upload, reuse (images); animate (clips); curation; train (LoRAs).
    operation: str
    thumb_key: str | None  # media key of its picture (a clip's poster); None for the others
    created_at: datetime
    focus: bool = False


@dataclass(frozen=True)
class LineageEdge:
    parent: str
    child: str
    # The child's operation (edit, variations, fork, reuse, ...), "animate" to a clip,
    # "train" to a LoRA, and a curation's verdict on its candidate ("kept" | "rejected").
    relation: str


@dataclass
class Lineage:
    focus: str
    nodes: list[LineageNode] = field(default_factory=list)
    edges: list[LineageEdge] = field(default_factory=list)
    truncated: bool = False


async def family(
    engine: AsyncEngine, user_id: str, item_id: str, *, max_nodes: int = MAX_NODES
) -> Lineage:
    """The family of the user's image (or clip) `item_id`; NotFound if it is not theirs.

    A clip's family is that of the image it was made from, with the clip as focus; a clip
    made from text alone is a family of one.
    """
    if not is_uuid(item_id):
        raise NotFound("No such image or clip in your gallery.")
    item_id = item_id.lower()
    async with session_factory(engine)() as session:
        walk = _Walk(session, user_id, item_id, max_nodes)
        return await walk.run()


class _Walk:
    """One family walk: the nodes found so far (in the order they were found) and edges."""

    def __init__(self, session: AsyncSession, user_id: str, focus: str, cap: int) -> None:
        self.session, self.user_id, self.focus, self.cap = session, user_id, focus, cap
        self.images: dict[str, Any] = {}  # id -> image row (the columns above)
        self.others: dict[str, LineageNode] = {}  # clips, curations, LoRAs
        self.clip_sources: dict[str, str | None] = {}  # clip id -> its source image id
        self.edges: list[LineageEdge] = []
        self.truncated = False

    def room(self) -> int:
        return self.cap - len(self.images) - len(self.others)

    async def run(self) -> Lineage:
        start = await self._start()
        if start is not None:
            chain = await self._ancestors(start)
            for row in chain:
                self.images[row.id] = row
            await self._descend([start])  # the focus's own descendants first
            await self._descend([chain[0].id])  # then the rest of the root's family
            await self._curations()
            await self._clips()
            await self._loras()
        return self._result()

    # ----------------------------------------------------------------- the images

    async def _start(self) -> str | None:
        """The image the walk starts from: the focus, or the clip's source image."""
        own = await self.session.scalar(
            select(Image.id).where(Image.id == self.focus, Image.user_id == self.user_id)
        )
        if own is not None:
            return own
        clip = (
            await self.session.execute(
                select(Video).where(Video.id == self.focus, Video.user_id == self.user_id)
            )
        ).scalar_one_or_none()
        if clip is None:
            raise NotFound("No such image or clip in your gallery.")
        self._add_clip(clip)
        if clip.source_image_id is None:
            return None
        return await self.session.scalar(
            select(Image.id).where(Image.id == clip.source_image_id, Image.user_id == self.user_id)
        )

    async def _ancestors(self, start: str) -> list[Any]:
        """The parent chain from the root down to `start` (the user's images only)."""
        chain: list[Any] = []
        seen: set[str] = set()
        current: str | None = start
        while current is not None and current not in seen and len(chain) < _MAX_DEPTH:
            row = (
                await self.session.execute(
                    select(*_IMAGE_COLUMNS).where(
                        Image.id == current, Image.user_id == self.user_id
                    )
                )
            ).one_or_none()
            if row is None:
                break  # a parent that is gone (or, impossibly, someone else's)
            seen.add(current)
            chain.append(row)
            current = row.parent_id
        if current is not None and current in seen:
            self.truncated = True  # a cycle: never made by the app, but never looped on
        elif len(chain) >= _MAX_DEPTH and current is not None:
            self.truncated = True
        chain.reverse()
        if len(chain) > self.cap:  # keep the focus and its nearest ancestors
            chain = chain[-self.cap :]
            self.truncated = True
        return chain

    async def _descend(self, roots: Sequence[str]) -> None:
        """Add the descendants of `roots`, breadth first, while there is room."""
        frontier = list(roots)
        expanded: set[str] = set()
        while frontier:
            expanded.update(frontier)
            children: list[Any] = []
            for batch in _batches(frontier):
                children += (
                    await self.session.execute(
                        select(*_IMAGE_COLUMNS)
                        .where(Image.parent_id.in_(batch), Image.user_id == self.user_id)
                        .order_by(Image.created_at, Image.id)
                    )
                ).all()
            frontier = []
            for row in children:
                if row.id in expanded:
                    continue  # a cycle (never made by the app): not walked twice
                if row.id not in self.images:  # else already there (the chain): walk on
                    if self.room() <= 0:
                        self.truncated = True
                        return
                    self.images[row.id] = row
                frontier.append(row.id)
            frontier = list(dict.fromkeys(frontier))

    # ------------------------------------------------- what the images took part in

    async def _curations(self) -> None:
        """The curations the family's images were ranked in, with every candidate."""
        ids = list(self.images)
        curation_ids: list[str] = []
        for batch in _batches(ids):
            curation_ids += (
                await self.session.scalars(
                    select(CurationCandidate.curation_id)
                    .join(Curation, Curation.id == CurationCandidate.curation_id)
                    .where(CurationCandidate.image_id.in_(batch), Curation.user_id == self.user_id)
                )
            ).all()
        curation_ids = list(dict.fromkeys(curation_ids))
        if not curation_ids:
            return
        curations = {
            c.id: c
            for c in (
                await self.session.scalars(
                    select(Curation)
                    .where(Curation.id.in_(curation_ids), Curation.user_id == self.user_id)
                    .order_by(Curation.created_at, Curation.id)
                )
            ).all()
        }
        candidates = (
            await self.session.execute(
                select(CurationCandidate.curation_id, CurationCandidate.verdict, *_IMAGE_COLUMNS)
                .join(Image, Image.id == CurationCandidate.image_id)
                .where(
                    CurationCandidate.curation_id.in_(list(curations)),
                    Image.user_id == self.user_id,
                )
                .order_by(CurationCandidate.curation_id, CurationCandidate.rank)
            )
        ).all()
        for curation in curations.values():
            if curation.id in self.others:
                continue
            if self.room() <= 0:
                self.truncated = True
                return
            self.others[curation.id] = LineageNode(
                id=curation.id,
                kind="curation",
                label=_clip_text(curation.prompt) or "curation",
                operation="curation",
                thumb_key=None,
                created_at=_aware(curation.created_at),
            )
        for row in candidates:
            if row.curation_id not in self.others:
                continue
            if row.id not in self.images:
                if self.room() <= 0:
                    self.truncated = True
                    continue
                self.images[row.id] = row  # a rival candidate: shown, not walked
            self.edges.append(LineageEdge(row.curation_id, row.id, row.verdict))

    async def _clips(self) -> None:
        ids = list(self.images)
        for batch in _batches(ids):
            clips = (
                await self.session.scalars(
                    select(Video)
                    .where(Video.source_image_id.in_(batch), Video.user_id == self.user_id)
                    .order_by(Video.created_at, Video.id)
                )
            ).all()
            for clip in clips:
                if clip.id not in self.others:
                    if self.room() <= 0:
                        self.truncated = True
                        continue
                    self._add_clip(clip)
        for clip_id, source in self.clip_sources.items():
            if source is not None and source in self.images:
                self.edges.append(LineageEdge(source, clip_id, "animate"))

    def _add_clip(self, clip: Video) -> None:
        self.others[clip.id] = _clip_node(clip)
        self.clip_sources[clip.id] = clip.source_image_id

    async def _loras(self) -> None:
        """The user's LoRAs whose dataset manifest names one of the family's images.

        The manifest is JSON (each image's `source_id`), read here rather than queried:
        a user has a handful of LoRAs, and JSON array search differs between databases.
        """
        rows = (
            await self.session.execute(
                select(
                    LoraModel.id,
                    LoraModel.name,
                    LoraModel.status,
                    LoraModel.dataset,
                    LoraModel.created_at,
                )
                .where(LoraModel.user_id == self.user_id)
                .order_by(LoraModel.created_at, LoraModel.id)
            )
        ).all()
        for lora in rows:
            sources = [i for i in _dataset_sources(lora.dataset) if i in self.images]
            if not sources:
                continue
            if self.room() <= 0:
                self.truncated = True
                return
            label = lora.name if lora.status == "succeeded" else f"{lora.name} ({lora.status})"
            self.others[lora.id] = LineageNode(
                id=lora.id,
                kind="lora",
                label=label,
                operation="train",
                thumb_key=None,
                created_at=_aware(lora.created_at),
            )
            self.edges.extend(LineageEdge(source, lora.id, "train") for source in sources)

    # --------------------------------------------------------------------- result

    def _result(self) -> Lineage:
        nodes = [_image_node(row, row.id == self.focus) for row in self.images.values()]
        for node in self.others.values():
            nodes.append(node if node.id != self.focus else _focused(node))
        parent_edges = [
            LineageEdge(row.parent_id, row.id, _operation(row))
            for row in self.images.values()
            if row.parent_id is not None and row.parent_id in self.images
        ]
        nodes.sort(key=lambda n: (n.created_at, n.id))
        return Lineage(
            focus=self.focus,
            nodes=nodes,
            edges=parent_edges + _unique(self.edges),
            truncated=self.truncated,
        )


def _operation(row: Any) -> str:
    lineage = (row.parameters or {}).get("lineage")
    operation = lineage.get("operation") if isinstance(lineage, dict) else None
    if isinstance(operation, str) and operation:
        return operation
    return "upload" if row.backend == "upload" else "generate"


def _image_node(row: Any, focus: bool) -> LineageNode:
    return LineageNode(
        id=row.id,
        kind="image",
        label=_clip_text(row.prompt_typed or row.prompt_sent) or "image",
        operation=_operation(row),
        thumb_key=row.media_key,
        created_at=_aware(row.created_at),
        focus=focus,
    )


def _clip_node(clip: Video) -> LineageNode:
    return LineageNode(
        id=clip.id,
        kind="video",
        label=_clip_text(clip.prompt_typed or clip.prompt_sent or "") or "clip",
        operation="animate" if clip.source_image_id else "generate",
        thumb_key=clip.poster_key,
        created_at=_aware(clip.created_at),
    )


def _focused(node: LineageNode) -> LineageNode:
    return replace(node, focus=True)


def _dataset_sources(dataset: Any) -> list[str]:
    """The chat image ids a LoRA's dataset manifest names (uploaded zip entries are not)."""
    images = (dataset or {}).get("images") if isinstance(dataset, dict) else None
    found: list[str] = []
    for image in images or []:
        source = image.get("source_id") if isinstance(image, dict) else None
        if is_uuid(source):
            found.append(str(source).lower())
    return list(dict.fromkeys(found))


def _clip_text(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= _LABEL else text[: _LABEL - 1] + "…"


def _aware(value: datetime) -> datetime:
    """SQLite reads times back naive; they were written in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _batches(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), _IN_BATCH):
        yield list(ids[start : start + _IN_BATCH])


def _unique(edges: Iterable[LineageEdge]) -> list[LineageEdge]:
    return list(dict.fromkeys(edges))
