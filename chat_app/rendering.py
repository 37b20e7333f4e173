"""How things look in the chat: errors, notices, images (the welcome: chat_app/welcome.py)."""

from __future__ import annotations

import chainlit as cl
from chainlit.context import local_steps
from chainlit.data import get_data_layer
from chainlit.session import WebsocketSession, ws_sessions_id

from chat_app import image_buttons
from core import money
from core.logging_setup import get_logger
from memory.images import ImageRecord
from tools.context import ToolArtifact

log = get_logger(__name__)


def beside_current_step(message: cl.Message) -> cl.Message:
    """Give the message the parent of the running step (a tool's), so it is shown beside
    that step rather than folded inside it, and in the same turn: an agent's turn hangs
    its messages under Chainlit's run step, a command's have no parent."""
    steps = local_steps.get() or []
    message.parent_id = steps[-1].parent_id if steps else None
    return message


async def error(text: str) -> None:
    await cl.Message(content=f"**Could not do that:** {text}", author="Atelier").send()


async def notice(text: str) -> None:
    await cl.Message(content=text, author="Atelier").send()


def caption(artifact: ToolArtifact) -> str:
    """Two short lines: what was asked, and the size, model and price of the request.

    Each image's own seed, id and cost are in its details (the ⓘ on the image), not
    here: a wall of numbers under every grid is what nobody reads.
    """
    records = [record for record, _ in artifact.images]
    first, count = records[0], len(records)
    title = f"{'Image' if count == 1 else f'{count} images'} for *{first.prompt_sent[:300]}*"
    if artifact.before:
        source = artifact.before[0][0]
        title = f"**Before** (`{source.id[:8]}`) and **after**: *{first.prompt_typed[:300]}*"
    cost = first.parameters.get("cost") or {}
    price = ""
    if cost and not cost.get("unpriced"):
        price = f" · {money.usd(cost['usd'], 4)} ({cost['source']})"
    elif cost:
        price = " · cost unknown (no price for this model)"
    lines = [title, f"{first.width}×{first.height} · {first.backend} `{first.model}`{price}"]
    lines.extend(f"_{note}_" for note in artifact.notes)
    return "\n\n".join(lines)


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def _image_name(record: ImageRecord, role: str = "") -> str:
    """`<id>.png`, `before-<id>.jpg`: the image's id (images.js puts its buttons on it by
    that) and its type (the name a download is saved under)."""
    return f"{role}{record.id}.{_EXTENSIONS.get(record.mime, 'png')}"


def _image(record: ImageRecord, name: str, size: str) -> cl.Image:
    """The image as a link to the media store, where it already is.

    Given its bytes, Chainlit would write another copy into the session's files and the
    data layer would hash and store them again (for a 1024x1024 PNG, milliseconds of CPU
    and megabytes of writing per image, in every turn). The plain media route, like a
    clip's poster: the browser sends the login cookie, and the owner check applies.
    `stored_media_key` tells the data layer the file is stored (memory/data_layer.py).
    """
    element = cl.Image(
        url=f"/media/{record.media_key}", name=name, display="inline", size=size, mime=record.mime
    )
    element.stored_media_key = record.media_key  # type: ignore[attr-defined]
    return element


async def images(artifact: ToolArtifact) -> None:
    if artifact.text:
        await cl.Message(content=artifact.text, author="Atelier").send()
    if artifact.videos:
        await clips(artifact)
        return
    if not artifact.images:
        return
    shown = [record for record, _ in artifact.before + artifact.images]
    elements: list[cl.Element] = [
        _image(record, _image_name(record, "before-"), "medium") for record, _ in artifact.before
    ]
    elements += [
        _image(record, _image_name(record), _grid_size(artifact)) for record, _ in artifact.images
    ]
    message = cl.Message(
        content=artifact.caption or caption(artifact),
        author="Atelier",
        actions=[action for record in shown for action in image_buttons.actions_for(record)],
    )
    await message.send()
    await send_in_order(message, elements)


def _grid_size(artifact: ToolArtifact) -> str:
    """Chainlit lays a message's images on a 4-column grid by their size: "small" takes
    one column (curation candidates, four a row), "medium" two (a request's results and
    an edit's before and after, side by side), "large" all four (one image alone)."""
    if artifact.grid:
        return "small"
    return "large" if len(artifact.images) == 1 and not artifact.before else "medium"


async def send_in_order(message: cl.Message, elements: list[cl.Element]) -> None:
    """Store, then show, each element in turn, so the order is the same after a resume.

    Chainlit's own path sends a message's elements concurrently and stores them in
    fire-and-forget tasks: the grid of a curation would come out in random order, and a
    reload right after the turn could miss an image. Here each element is written
    before it is shown, so it is saved before the turn ends and in rank order.
    """
    data_layer = get_data_layer()
    for element in elements:
        element.for_id = message.id
        if data_layer is not None:
            await data_layer.create_element(element)
        await element.send(for_id=message.id, persist=False)


def video_caption(artifact: ToolArtifact) -> str:
    record, _ = artifact.videos[0]
    what = record.prompt_typed or record.prompt_sent
    title = f"Clip for *{what[:300]}*" if what else "Clip"
    if record.source_image_id:
        title += f", from image `{record.source_image_id[:8]}`"
    cost = record.parameters.get("cost") or {}
    price = ""
    if cost and not cost.get("unpriced"):
        price = f" · {money.usd(cost['usd'], 4)} ({cost['source']})"
    elif cost:
        price = " · cost unknown (no price for this model)"
    seed = f"seed {record.seed}" if record.seed is not None else f"no seed ({record.backend})"
    lines = [
        title,
        f"{record.seconds:.3g} s · {record.frames} frames at {record.fps:g} fps · "
        f"{record.width}×{record.height} · {record.backend} `{record.model}`{price} · {seed} · "
        f"id `{record.id[:8]}`",
    ]
    lines.extend(f"_{note}_" for note in artifact.notes)
    return "\n\n".join(lines)


async def images_now(artifact: ToolArtifact) -> None:
    """Show images mid-tool-call (a keyframe before its clip) beside the tool's step.

    A message made inside the tool's step would be nested in it, and the UI folds steps
    away; what the user should watch being animated must be seen. As if the tool's step
    were not running: the messages take its parent, so they stay in this turn.
    """
    token = local_steps.set((local_steps.get() or [])[:-1])
    try:
        await images(artifact)
    finally:
        local_steps.reset(token)


async def clips(artifact: ToolArtifact) -> None:
    """Each clip as a player with its poster frame, after any keyframe it started from.

    The poster link is the plain media route (no signature): the browser sends the login
    cookie with it, so it keeps working after a resume, long after a signed link expires.
    """
    elements: list[cl.Element] = [
        _image(record, _image_name(record, "keyframe-"), "medium") for record, _ in artifact.images
    ]
    elements += [
        cl.Video(
            content=data,
            name=f"{record.id}.mp4",
            display="inline",
            size="large",
            mime=record.mime,
            player_config={"file": {"attributes": {"poster": f"/media/{record.poster_key}"}}},
        )
        for record, data in artifact.videos
    ]
    message = cl.Message(
        content=artifact.caption or video_caption(artifact),
        author="Atelier",
        actions=[
            action for record, _ in artifact.images for action in image_buttons.actions_for(record)
        ],
    )
    await message.send()
    await send_in_order(message, elements)


async def mirror_update(
    origin: WebsocketSession, thread_id: str, message: cl.Message, what: str
) -> None:
    """A message's new text to the same user's other pages showing its thread.

    Background work (a training, a batch) updates its message in the session that
    started it; a page reloaded or opened in another tab is a session of its own.
    `what` names the work in the log line of a page that closed mid-send, which must
    not stop the work.
    """
    user = getattr(origin.user, "identifier", None)
    for session in list(ws_sessions_id.values()):
        if session is origin or session.thread_id != thread_id:
            continue
        if getattr(session.user, "identifier", None) != user:
            continue
        try:
            await session.emit("update_message", message.to_dict())
        except Exception as exc:
            log.info(f"{what}_mirror_failed", error=type(exc).__name__)
