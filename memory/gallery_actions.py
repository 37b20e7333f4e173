"""What the gallery does to an item: star it, delete it, carry it into a new conversation.

Each acts only on the requester's own rows; anyone else's id, or one that is not an id at
all, is not found, as everywhere else (memory/thread_media.py).

Deleting is the only place a stored file is ever removed. Files are content-addressed
(memory/media_store.py), so one file can stand behind several rows: the same bytes
uploaded twice, by this user or by another, or a clip and an image that share a frame.
So the row goes, then the user's claims on its files in the conversations where no other
row of theirs still shows them (with the chat elements that showed them there), and a file
only when nothing at all refers to it any more. What was derived from a deleted image
keeps its own record: its `parent_id` (or a clip's `source_image_id`) becomes empty.

"Use in a new conversation" copies the image's row into a new conversation named after its
prompt, as an image derived from it (lineage operation "reuse"), with an assistant message
that shows it: the chat shows it when the conversation is opened, and the tools find it as
the conversation's latest image ("edit it", "animate it") like any other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import InvalidInput, NotFound
from core.logging_setup import get_logger
from memory.db import session_factory, write_session
from memory.ids import is_uuid
from memory.images import ImageRecord, ImageStore, NewImage
from memory.media_store import MediaStorage
from memory.models import (
    Element,
    Image,
    ImageEmbedding,
    MediaRef,
    Thread,
    Video,
    new_id,
    utcnow,
)
from memory.written_messages import image_elements, message_step

if TYPE_CHECKING:
    from memory.thumbnails import Thumbnails

log = get_logger(__name__)

_NOT_FOUND = "No such image or clip in your gallery."
_NAME_CHARS = 80  # of the prompt, as the new conversation's name


@dataclass(frozen=True)
class Deleted:
    id: str
    kind: str  # image | video
    removed_files: list[str]  # media keys whose files were removed (nothing else used them)


def _checked_id(item_id: str) -> str:
    """A well-formed id, lower-cased as stored; anything else is simply not found."""
    if not is_uuid(item_id):
        raise NotFound(_NOT_FOUND)
    return item_id.lower()


# ------------------------------------------------------------------------- star


async def set_kept(engine: AsyncEngine, user_id: str, image_id: str, kept: bool) -> datetime | None:
    """Star (or unstar) the user's image; returns when it is kept (None: not kept).

    Starring a starred image keeps its first time, as the chat's Keep button does. Clips
    have no star (nothing records one), which is said rather than ignored.
    """
    image_id = _checked_id(image_id)
    sessions = session_factory(engine)
    async with write_session(sessions) as session:
        found = await session.execute(
            select(Image.kept_at).where(Image.id == image_id, Image.user_id == user_id)
        )
        row = found.one_or_none()
        if row is None:
            if await _own_clip(session, user_id, image_id) is not None:
                raise InvalidInput("Only images can be starred, not clips.")
            raise NotFound(_NOT_FOUND)
        kept_at = row.kept_at
        if kept and kept_at is None:
            kept_at = utcnow()
        elif not kept:
            kept_at = None
        if kept_at != row.kept_at:
            await session.execute(
                update(Image)
                .where(Image.id == image_id, Image.user_id == user_id)
                .values(kept_at=kept_at)
            )
    if kept_at is not None and kept_at.tzinfo is None:
        kept_at = kept_at.replace(tzinfo=UTC)
    return kept_at


# ----------------------------------------------------------------------- delete


async def delete_item(
    engine: AsyncEngine,
    media: MediaStorage,
    user_id: str,
    item_id: str,
    *,
    thumbnails: Thumbnails | None = None,
) -> Deleted:
    """Delete the user's image or clip, its claims, and its files once nothing uses them.

    One transaction for the rows; the files are removed after it commits (a failed
    commit must not leave rows pointing at removed files), each only if, read again then,
    nothing refers to it. Thumbnails of removed files go too, when `thumbnails` is given.
    """
    item_id = _checked_id(item_id)
    sessions = session_factory(engine)
    async with write_session(sessions) as session:
        image = (
            await session.execute(
                select(Image.thread_id, Image.media_key).where(
                    Image.id == item_id, Image.user_id == user_id
                )
            )
        ).one_or_none()
        if image is not None:
            kind, keys = "image", [image.media_key]
            await _delete_image_row(session, item_id)
        else:
            clip = await _own_clip(session, user_id, item_id)
            if clip is None:
                raise NotFound(_NOT_FOUND)
            kind, keys = "video", list(dict.fromkeys([clip.media_key, clip.poster_key]))
            await session.execute(delete(Video).where(Video.id == item_id))
        for key in keys:
            await _release_claims(session, user_id, key)
    removed: list[str] = []
    for key in keys:
        if await _unreferenced(engine, key):
            await asyncio.to_thread(_remove_file, media, key)
            if thumbnails is not None:
                await asyncio.to_thread(thumbnails.discard, key)
            removed.append(key)
    log.info("gallery_item_deleted", kind=kind, files_removed=len(removed))
    return Deleted(id=item_id, kind=kind, removed_files=removed)


async def _own_clip(session: AsyncSession, user_id: str, clip_id: str) -> Any:
    return (
        await session.execute(
            select(Video.media_key, Video.poster_key).where(
                Video.id == clip_id, Video.user_id == user_id
            )
        )
    ).one_or_none()


async def _delete_image_row(session: AsyncSession, image_id: str) -> None:
    """The row, and what is only about it; what was derived from it stays, unparented.

    The foreign keys do the same (SET NULL, CASCADE); said here as well, so the rule does
    not rest on a database enforcing them.
    """
    await session.execute(update(Image).where(Image.parent_id == image_id).values(parent_id=None))
    await session.execute(
        update(Video).where(Video.source_image_id == image_id).values(source_image_id=None)
    )
    await session.execute(delete(ImageEmbedding).where(ImageEmbedding.image_id == image_id))
    await session.execute(delete(Image).where(Image.id == image_id))


async def _release_claims(session: AsyncSession, user_id: str, key: str) -> None:
    """Drop the user's claims on `key` (and the elements showing it) in each of their
    conversations where none of their remaining images or clips uses it."""
    threads = (
        await session.scalars(
            select(MediaRef.thread_id)
            .join(Thread, Thread.id == MediaRef.thread_id)
            .where(MediaRef.media_key == key, Thread.user_id == user_id)
        )
    ).all()
    for thread_id in threads:
        still_shown = await session.scalar(
            select(
                or_(
                    exists().where(Image.thread_id == thread_id, Image.media_key == key),
                    exists().where(
                        Video.thread_id == thread_id,
                        or_(Video.media_key == key, Video.poster_key == key),
                    ),
                )
            )
        )
        if still_shown:
            continue
        await session.execute(
            delete(Element).where(Element.thread_id == thread_id, Element.media_key == key)
        )
        await session.execute(
            delete(MediaRef).where(MediaRef.thread_id == thread_id, MediaRef.media_key == key)
        )


async def _unreferenced(engine: AsyncEngine, key: str) -> bool:
    """Whether no claim, image, clip or chat element of anyone's refers to `key`."""
    referred = or_(
        exists().where(MediaRef.media_key == key),
        exists().where(Image.media_key == key),
        exists().where(or_(Video.media_key == key, Video.poster_key == key)),
        exists().where(Element.media_key == key),
    )
    async with session_factory(engine)() as session:
        return not await session.scalar(select(referred))


def _remove_file(media: MediaStorage, key: str) -> None:
    media.delete(key)


# -------------------------------------------------------- reuse in a new chat


async def reuse_in_new_conversation(
    engine: AsyncEngine,
    media: MediaStorage,
    user_id: str,
    image_id: str,
    *,
    images: ImageStore | None = None,
) -> str:
    """A new conversation of the user's, starting from their image; returns its id.

    The copy is recorded through `ImageStore.record` like any image (its own row, file
    with its own embedded parameters, and claim), derived from the source (`parent_id`,
    lineage operation "reuse", cost none: nothing was spent on it). Then, in one
    transaction, the conversation gets its name and an assistant message showing the
    copy, stored as the data layer stores a message and its image, so `get_thread`
    returns them when it is opened and the image's buttons are restored. If that fails,
    the conversation is removed again (with the copy's row and claim).

    Pass the app's `images` store, so what it does for every new image (its likeness
    embedding, `ImageStore.on_recorded`) is done for the copy too.
    """
    image_id = _checked_id(image_id)
    store = images or ImageStore(engine, media)
    sessions = session_factory(engine)
    try:
        source = await store.get(image_id, user_id)
    except NotFound:
        async with sessions() as session:
            if await _own_clip(session, user_id, image_id) is not None:
                raise InvalidInput(
                    "Only an image can start a new conversation; open the clip's source "
                    "image and use that."
                ) from None
        raise NotFound(_NOT_FOUND) from None
    async with sessions() as session:  # the style the gallery files it under, kept
        style = await session.scalar(select(Image.style).where(Image.id == source.id))
    data = await asyncio.to_thread(media.get, source.media_key)
    thread_id, step_id = new_id(), new_id()
    copy, _ = await store.record(thread_id, user_id, _copy_of(source, data, step_id, style))
    try:
        async with write_session(sessions) as session:
            await _open_with(session, thread_id, step_id, source, copy)
    except BaseException:
        async with write_session(sessions) as session:
            await session.execute(
                delete(Thread).where(Thread.id == thread_id, Thread.user_id == user_id)
            )
        if await _unreferenced(engine, copy.media_key):
            await asyncio.to_thread(_remove_file, media, copy.media_key)
        raise
    log.info("gallery_image_reused")
    return thread_id


def _copy_of(source: ImageRecord, data: bytes, step_id: str, style: str | None) -> NewImage:
    """The source as a new image derived from it; its request and inputs are kept (so
    variations and forks of the copy replay them), its cost is not (nothing was spent)."""
    parameters = {k: v for k, v in source.parameters.items() if k != "cost"}
    earlier = source.parameters.get("lineage")
    style = (earlier.get("style") if isinstance(earlier, dict) else None) or style
    parameters["lineage"] = {
        "operation": "reuse",
        "source": source.id,
        **({"style": style} if style else {}),
    }
    return NewImage(
        data=data,
        mime=source.mime,
        width=source.width,
        height=source.height,
        prompt_typed=source.prompt_typed,
        prompt_sent=source.prompt_sent,
        backend=source.backend,
        model=source.model,
        parameters=parameters,
        seed=source.seed,
        parent_id=source.id,
        message_id=step_id,
        cost_usd=None,
        duration_ms=None,
    )


async def _open_with(
    session: AsyncSession,
    thread_id: str,
    step_id: str,
    source: ImageRecord,
    copy: ImageRecord,
) -> None:
    """Name the new conversation and add the message that shows the copy."""
    now = utcnow()
    await session.execute(
        update(Thread)
        .where(Thread.id == thread_id)
        .values(name=_thread_name(source), updated_at=now, meta={})
    )
    session.add(
        message_step(step_id, thread_id, "Atelier", "assistant_message", _message(source, copy))
    )
    session.add_all(image_elements(thread_id, step_id, [copy]))


def _thread_name(source: ImageRecord) -> str:
    prompt = " ".join((source.prompt_typed or source.prompt_sent or "").split())
    if not prompt:
        return f"Image {source.id[:8]}"
    return prompt if len(prompt) <= _NAME_CHARS else prompt[: _NAME_CHARS - 1] + "…"


def _message(source: ImageRecord, copy: ImageRecord) -> str:
    """What the message says: the agent reads it too, so it names the image's id."""
    prompt = " ".join((source.prompt_sent or source.prompt_typed or "").split())
    lines = [
        f"From your gallery: *{prompt[:300]}*" if prompt else "From your gallery:",
        f"{copy.width}×{copy.height} · {copy.backend} `{copy.model}` · image `{copy.id}` "
        f"(a copy of `{source.id}`)",
        "Ask for an edit, variations or a clip of it.",
    ]
    return "\n\n".join(lines)
