"""How things look in the chat: welcome, errors, notices, images."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import chainlit as cl
from chainlit.context import local_steps
from chainlit.data import get_data_layer

from chat_app import model_status
from core import money
from memory.images import ImageRecord
from tools.context import ToolArtifact

if TYPE_CHECKING:  # runtime builds the training display, which uses rendering
    from chat_app.runtime import Runtime


def _host(url: str | None, default: str) -> str:
    if not url:
        return default
    parts = urlsplit(url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else url


def welcome_text(runtime: Runtime, is_admin: bool = False) -> str:
    settings = runtime.settings
    if settings.llm_configured:
        base, _ = settings.llm_endpoint
        where = f" at {_host(base, 'api.openai.com')}" if is_admin else ""
        llm = f"`{settings.llm_model}`{where}"
        how = "Ask in plain words, e.g. *draw a fox in the snow, watercolour*."
    else:
        llm = "not configured, so Atelier runs in **command mode**"
        how = (
            "Type what you want to see and it becomes the image prompt, or use "
            "`/image <prompt> [--size 1536x1024] [--n 2] [--quality high]`. `/help` lists commands."
        )
    backends = runtime.services.backends.available()
    images = (
        ", ".join(f"{b.label} (`{b.default_model}`)" for b in backends)
        if backends
        else "none configured (set OPENAI_API_KEY to enable OpenAI images)"
    )
    database = "SQLite" if runtime.engine.dialect.name == "sqlite" else "PostgreSQL"
    return (
        "**Welcome to Atelier.** " + how + "\n\n"
        f"- Chat model: {llm}\n"
        f"- Image backends: {images}\n"
        f"- Video backends: {_video_backends(runtime)}\n"
        f"- Storage: {database}"
        + (f", files in `{settings.data_dir}`" if is_admin else "")
        + _model_lifecycle(runtime, is_admin)
        + "\n\n"
        "To add or change a model, set `ATELIER_LLM_MODEL`, `ATELIER_LLM_BASE_URL` "
        "(e.g. Ollama or vLLM), `OPENAI_API_KEY` or `REPLICATE_API_TOKEN` and restart; "
        "`atelier doctor` shows what is configured and reachable."
    )


def _model_lifecycle(runtime: Runtime, is_admin: bool) -> str:
    """Administrators see every configured model's status; everyone sees one that is
    retiring or retired, since their requests depend on it."""
    catalogue = runtime.services.backends.catalogue
    if catalogue is None:
        return ""
    rows = model_status.statuses(catalogue, runtime.settings)
    shown = [(m, s) for m, s in rows if is_admin or s.state in ("retiring", "retired")]
    if not shown:
        return ""
    head = "\n- Models (catalogue, as of " + str(rows[0][1].today) + "):"
    return head + "".join(f"\n  - {model_status.line(m, s)}" for m, s in shown)


def _video_backends(runtime: Runtime) -> str:
    found = runtime.services.video_backends.available()
    if not found:
        return "none configured (set REPLICATE_API_TOKEN, or install the local extra)"
    return ", ".join(f"{b.label} (`{b.default_model}`)" for b in found)


async def welcome(runtime: Runtime) -> None:
    user = cl.user_session.get("user")
    is_admin = bool(user and (user.metadata or {}).get("role") == "admin")
    await cl.Message(content=welcome_text(runtime, is_admin), author="Atelier").send()


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


def _seed_text(records: list[ImageRecord]) -> str:
    seeds = [record.seed for record in records if record.seed is not None]
    if seeds:
        return "seed " + ", ".join(str(seed) for seed in seeds)
    return f"no seed ({records[0].backend} does not take one)"


def caption(artifact: ToolArtifact) -> str:
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
    lines = [
        title,
        f"{first.width}×{first.height} · {first.backend} `{first.model}`{price} · "
        + _seed_text(records)
        + " · "
        + ", ".join(f"id `{record.id[:8]}`" for record in records),
    ]
    lines.extend(f"_{note}_" for note in artifact.notes)
    return "\n\n".join(lines)


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
    elements: list[cl.Element] = [
        _image(record, f"before-{record.id}.png", "medium") for record, _ in artifact.before
    ]
    size = "small" if artifact.grid else "large"  # curation candidates side by side
    elements += [_image(record, f"{record.id}.png", size) for record, _ in artifact.images]
    message = cl.Message(content=artifact.caption or caption(artifact), author="Atelier")
    await message.send()
    await send_in_order(message, elements)


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
        _image(record, f"keyframe-{record.id}.png", "medium") for record, _ in artifact.images
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
    message = cl.Message(content=artifact.caption or video_caption(artifact), author="Atelier")
    await message.send()
    await send_in_order(message, elements)
