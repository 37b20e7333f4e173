"""What a click on an image's button does: Vary, Edit, Bigger, Animate, Keep, Details.

The buttons are Chainlit actions (chat_app/image_buttons.py). A click runs the same tool
as the typed command (`/variations`, `/edit`, `/fork --size`, `/animate`, `/keep`)
through the same runner (chat_app/tool_runner.py): the estimate, the confirmation, the
budget, the lineage and the cost are recorded exactly as typed. The image id in the
payload comes from the browser, so it is only ever looked up as the current user's
(`ToolContext.image`): someone else's id is "not found", as when typed.

The work runs as the session's current task, like a chat message: the stop button stops
it, and the HTTP call that pressed the button returns at once (a clip takes minutes).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import chainlit as cl
import structlog

from chat_app import image_buttons, rendering
from chat_app.image_buttons import ANIMATE, BIGGER, DETAILS, EDIT, KEEP, KEPT, VARY, button, details
from chat_app.runtime import get_runtime
from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger

if TYPE_CHECKING:
    from chainlit.types import ThreadDict

    from pipelines.images.base import Capabilities
    from tools.context import ToolContext

log = get_logger(__name__)
ASK_TIMEOUT_S = 600  # how long Edit waits for the change to be typed


async def restore_buttons(thread: ThreadDict, user_id: str) -> None:
    """A resumed conversation's images get their buttons again (chat_app/handlers.py)."""
    await image_buttons.restore(thread, user_id, get_runtime().services.images)


Work = Callable[["ToolContext", str, cl.Action], Awaitable[None]]
_running: set[asyncio.Task[None]] = set()  # kept from the garbage collector


async def _start(action: cl.Action, work: Work) -> None:
    """Run `work` as the session's current task, as Chainlit runs a message."""
    session = cl.context.session
    current = getattr(session, "current_task", None)
    if current is not None and not current.done():
        await rendering.error(
            "Another request is still running in this conversation; wait for it to "
            "finish (or stop it), then press the button again."
        )
        return
    task = asyncio.create_task(_run(action, work))
    session.current_task = task
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _run(action: cl.Action, work: Work) -> None:
    emitter = cl.context.emitter
    await emitter.task_start()
    structlog.contextvars.bind_contextvars(
        thread_id=cl.context.session.thread_id, action=action.name
    )
    try:
        ctx = await _context()
        structlog.contextvars.bind_contextvars(user_id=ctx.turn.user_id)
        await work(ctx, _image_id(action), action)
    except AtelierError as exc:
        log.info("image_action_refused", kind=type(exc).__name__, reason=exc.message[:200])
        await rendering.error(exc.message)
    except asyncio.CancelledError:
        log.info("image_action_stopped")  # the tool's step says so in the chat
    except Exception:
        log.exception("image_action_failed")
        await rendering.error("Something went wrong on our side; please try again.")
    finally:
        await emitter.task_end()
        structlog.contextvars.clear_contextvars()


async def _context() -> ToolContext:
    """A turn of its own, as a typed message gets: the same panel, limits and port."""
    from chat_app import settings_panel
    from chat_app.chat_port import ChatPort
    from chat_app.turn import current_user_id
    from tools.context import ToolContext, Turn
    from tools.turn_guard import TurnGuard

    runtime = get_runtime()
    return ToolContext(
        services=runtime.services,
        turn=Turn(
            user_id=await current_user_id(runtime),
            thread_id=cl.context.session.thread_id,
            defaults=settings_panel.current(),
            guard=TurnGuard(max_tool_calls=runtime.settings.max_tool_calls_per_turn),
        ),
        port=ChatPort(),
    )


def _image_id(action: cl.Action) -> str:
    image_id = (action.payload or {}).get("image_id")
    if not isinstance(image_id, str) or not image_id:
        raise InvalidInput("That button names no image.")
    return image_id


async def _tool(ctx: ToolContext, name: str, **args: Any) -> bool:
    """Run the tool as a command would; False when it failed (the chat says why)."""
    from chat_app.tool_runner import run_tool_call

    result = await run_tool_call(ctx, {"name": name, "args": args, "id": "action"})
    return result.status != "error"


async def _vary(ctx: ToolContext, image_id: str, _: cl.Action) -> None:
    await _tool(ctx, "variations", image_id=image_id)


async def _edit(ctx: ToolContext, image_id: str, _: cl.Action) -> None:
    source = await ctx.image(image_id)  # someone else's is refused before asking
    answer = await cl.AskUserMessage(
        content=f"What should change in image `{source.id[:8]}`? For example: *make the "
        "sky stormy*, *add a red scarf*, *turn it into a watercolour*.",
        author="Atelier",
        timeout=ASK_TIMEOUT_S,
    ).send()
    instruction = str((answer or {}).get("output") or "").strip()
    if not instruction:
        await rendering.notice("No change was given, so the image was not edited.")
        return
    await _tool(ctx, "edit_image", instruction=instruction, image_id=source.id)


async def _bigger(ctx: ToolContext, image_id: str, _: cl.Action) -> None:
    source = await ctx.image(image_id)
    if source.backend == "upload":
        raise InvalidInput("That image was uploaded, so there is no prompt to redo it larger.")
    backend, model = ctx.services.backends.resolve(f"{source.backend}:{source.model}")
    size = bigger_size(backend.capabilities(model), source.width, source.height)
    if size is None:
        raise InvalidInput(
            f"{backend.label} {model} makes nothing larger than {source.width}×"
            f"{source.height} in this shape (its sizes: {backend.capabilities(model).summary()})."
        )
    await _tool(ctx, "fork_image", image_id=source.id, size=size)


def bigger_size(caps: Capabilities, width: int, height: int) -> str | None:
    """The next size up with the same shape that the model makes, or None.

    A listed size of the same aspect ratio, or (where the model takes any size in a
    range) 1.25, 1.5 or 2 times the sides; the smallest of those larger than now, so
    each press is one step. Never another shape: that would be another picture.
    """
    found: list[tuple[int, int, int]] = []
    for size in caps.sizes:
        w, _, h = size.partition("x")
        if not (w.isdigit() and h.isdigit()):
            continue  # "auto"
        same_shape = abs(int(w) * height - int(h) * width) <= 0.01 * width * int(h)
        if same_shape and int(w) * int(h) > width * height:
            found.append((int(w) * int(h), int(w), int(h)))
    if caps.size_range is not None:
        step = caps.size_range.multiple
        for factor in (1.25, 1.5, 2.0):
            w, h = (round(side * factor / step) * step for side in (width, height))
            if w * h > width * height and caps.size_range.allows(w, h):
                found.append((w * h, w, h))
    return f"{min(found)[1]}x{min(found)[2]}" if found else None


async def _animate(ctx: ToolContext, image_id: str, _: cl.Action) -> None:
    """The clip the conversation's video model makes from the image; a model that wants
    words for the motion gets the image's own prompt (the clip's caption shows it)."""
    source = await ctx.image(image_id)
    prompt = None
    if ctx.services.video_backends is not None:
        from tools.generate_video import choose_backend

        backend, model = choose_backend(ctx, ctx.services.video_backends, None)
        caps = backend.capabilities(model)
        if caps.prompt != "none":
            prompt = (source.prompt_typed or source.prompt_sent)[: caps.max_prompt_chars] or None
    await _tool(ctx, "generate_video", image_id=source.id, prompt=prompt)


async def _keep(ctx: ToolContext, image_id: str, clicked: cl.Action) -> None:
    if not await _tool(ctx, "keep_image", image_id=image_id):
        return
    record = await ctx.image(image_id)
    if clicked.forId:  # the star on the image fills at once, as after a reload
        await clicked.remove()
        await button(KEPT, record, secrets.token_hex(4)).send(for_id=clicked.forId)


@cl.action_callback(VARY)
async def _on_vary(action: cl.Action) -> None:
    await _start(action, _vary)


@cl.action_callback(EDIT)
async def _on_edit(action: cl.Action) -> None:
    await _start(action, _edit)


@cl.action_callback(BIGGER)
async def _on_bigger(action: cl.Action) -> None:
    await _start(action, _bigger)


@cl.action_callback(ANIMATE)
async def _on_animate(action: cl.Action) -> None:
    await _start(action, _animate)


@cl.action_callback(KEEP)
async def _on_keep(action: cl.Action) -> None:
    await _start(action, _keep)


@cl.action_callback(DETAILS)
async def _details(action: cl.Action) -> None:
    """images.js shows the details on the image; pressed otherwise, they are told here."""
    try:
        record = await (await _context()).image(_image_id(action))
    except AtelierError as exc:
        await rendering.error(exc.message)
        return
    await rendering.notice("**Details**\n\n" + details(record).replace("\n", "  \n"))


@cl.action_callback(KEPT)
async def _kept(action: cl.Action) -> None:
    """A kept image's star: nothing to do (there is no un-keeping yet)."""
    return None
