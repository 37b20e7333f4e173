"""Handling one incoming chat message: validate, route, and turn errors into messages.

This is the edge: below it everything raises; here errors become chat messages and the
log gets the thread, user and request ids.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import chainlit as cl
import structlog

from chat_app import (
    agent,
    batch_display,
    commands,
    model_status,
    rendering,
    settings_panel,
    titles,
)
from chat_app.chat_port import ChatPort
from chat_app.conversation import MAX_HISTORY_STEPS, build_messages, history_from_steps
from chat_app.empty_messages import EMPTY_MESSAGE
from chat_app.runtime import Runtime
from chat_app.uploads import (
    acknowledgement,
    list_acknowledgement,
    read_lists,
    read_zips,
    record_uploads,
)
from core import money
from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory.images import ImageRecord
from memory.instances import images_left_by, message_text
from memory.ledger import Reservation
from memory.loras import LoraRecord
from tools.context import ToolArtifact, ToolContext, Turn
from tools.turn_guard import TurnGuard

log = get_logger(__name__)


async def current_user_id(runtime: Runtime) -> str:
    user = cl.user_session.get("user")
    if user is not None and getattr(user, "id", None):
        return user.id
    persisted = await runtime.data_layer.get_user(user.identifier) if user else None
    if persisted is None:
        raise InvalidInput("Your session has no user; log in again.")
    return persisted.id


def check_text(text: str, limit: int, has_files: bool, command: str | None = None) -> str:
    """The message's text, stripped; a command chip (`/cost` from the menu) or a file
    makes a message without text a real one."""
    text = (text or "").strip()
    if not text and not has_files and not command:
        raise InvalidInput(EMPTY_MESSAGE)
    if len(text) > limit:
        raise InvalidInput(
            f"Your message has {len(text):,} characters; the limit is {limit:,}. "
            "It is saved above; send a shorter one (a prompt rarely needs more than a "
            "few hundred characters)."
        )
    return text


async def handle_message(runtime: Runtime, message: cl.Message) -> None:
    structlog.contextvars.bind_contextvars(thread_id=message.thread_id, request_id=message.id)
    user_id = None
    try:
        user_id = await current_user_id(runtime)
        structlog.contextvars.bind_contextvars(user_id=user_id)
        text = check_text(
            message.content,
            runtime.settings.max_message_chars,
            bool(message.elements),
            message.command,
        )
        ctx = ToolContext(
            services=runtime.services,
            turn=Turn(
                user_id=user_id,
                thread_id=message.thread_id,
                message_id=message.id,
                defaults=settings_panel.current(),
                guard=TurnGuard(max_tool_calls=runtime.settings.max_tool_calls_per_turn),
            ),
            port=ChatPort(),
        )
        loras = await _tell_interrupted(runtime, ctx)
        uploads = []
        if message.elements:
            elements = list(message.elements)
            zips = await read_zips(elements)
            files = await read_lists(elements)
            uploads = await record_uploads(ctx, elements, text)
            attached = {
                "attached_images": tuple(r.id for r in uploads),
                "attached_zips": tuple(zips),
                "attached_files": tuple(files),
            }
            ctx = replace(ctx, turn=replace(ctx.turn, **attached))
            handled = bool(message.command or text.startswith("/"))
            llm = runtime.settings.llm_configured
            if (uploads or zips) and not (zips and (handled or llm)):
                await rendering.notice(acknowledgement(uploads, zips))
            if files and not handled and not (llm and text):
                await rendering.notice(list_acknowledgement(files))
                return  # a list waits for a /batch in the same message
            if not (text or message.command) or (zips and not handled and not llm):
                return  # a zip alone waits for a /train in the same message
            if files and not handled:
                text += _list_note(files)  # the agent's start_batch reads them
        if message.command or text.startswith("/"):
            name, rest = _command(message.command, text)
            if name == "batch" and "\n" in rest:
                ctx, rest = _typed_list(ctx, rest)
            await commands.run(runtime, ctx, name, rest)
        elif runtime.settings.llm_configured:
            model_status.require_chat_model(runtime.services.backends.catalogue, runtime.settings)
            await _agent_turn(runtime, ctx, message, text, loras)
        elif uploads:
            await commands.run(runtime, ctx, "edit", f"{text} --image {uploads[0].id}")
        else:
            await commands.run(runtime, ctx, "image", text)
    except AtelierError as exc:
        log.info("turn_refused", kind=type(exc).__name__, reason=exc.message[:200])
        await rendering.error(exc.message)
    except Exception:
        log.exception("turn_failed")
        await rendering.error(
            f"Something went wrong on our side (request {message.id[:8]}). Your message is "
            "saved; please try again."
        )
    finally:
        structlog.contextvars.clear_contextvars()
    if user_id is not None:
        titles.schedule(
            runtime,
            user_id=user_id,
            thread_id=message.thread_id,
            typed=message.content,
            command=message.command,
        )


async def _tell_interrupted(runtime: Runtime, ctx: ToolContext) -> list[LoraRecord]:
    """Once per process: trainings a restart cut short, and how to continue them; once
    ever: other work in this conversation that a crash cut short.

    Returns the user's LoRAs, read for this anyway: an agent turn gives them to the model.
    """
    await tell_interrupted_work(runtime, ctx.turn.user_id, ctx.turn.thread_id)
    await batch_display.tell_finished(
        runtime, ctx.turn.user_id, ctx.turn.thread_id, known_only=True
    )
    if runtime.services.trainings is None:
        return []
    trainings = runtime.services.trainings
    records = await trainings.loras.for_user(ctx.turn.user_id)
    for record in trainings.untold_interrupted(records):
        await rendering.notice(
            f"The training of LoRA '{record.name}' was interrupted at step {record.step} "
            f"when the app stopped. `/train resume {record.name}` continues it."
        )
    return records


async def tell_interrupted_work(runtime: Runtime, user_id: str, thread_id: str) -> None:
    """Tell the user, once, what a crashed process left unfinished in this conversation:
    what was asked, what it had already stored (shown), and how to redo it.

    Looked up only for conversations the heartbeat found such work in, so an ordinary
    turn costs no query.
    """
    instances, ledger = runtime.instances, runtime.services.ledger
    if instances is None or ledger is None or thread_id not in instances.untold_threads:
        return
    instances.untold_threads.discard(thread_id)
    for entry in await ledger.claim_interrupted(user_id=user_id, thread_id=thread_id):
        if entry.what in ("training", "batch"):
            continue  # the LoRA's own notice says how to resume it; a batch resumes itself
        records = await images_left_by(runtime.engine, entry)
        text = interruption_notice(entry, records, await message_text(runtime.engine, entry))
        log.info("interruption_told", entry=entry.id, what=entry.what, images=len(records))
        if not records:
            await rendering.notice(text)
            continue
        store = runtime.services.images
        pairs = [(record, await asyncio.to_thread(store.read, record)) for record in records]
        await rendering.images(ToolArtifact(images=pairs, caption=text, grid=len(pairs) > 1))


def interruption_notice(entry: Reservation, records: list[ImageRecord], asked: str | None) -> str:
    """What was cut short, what it left, that nothing was charged, and how to redo it."""
    message = f" for your message “{_quote(asked)}”" if asked else ""
    held = (
        f"the {money.usd(entry.estimate_usd, 4)} held for it was released"
        if entry.estimate_usd > 0
        else "nothing was held for it"
    )
    charge = f"Nothing was counted against your budget: {held}."
    ids = [record.id[:8] for record in records]
    named = ", ".join(f"`{short}`" for short in ids)
    if entry.what == "curation":
        text = (
            f"**A curation was interrupted**{message}: the app stopped while it ran "
            f"({entry.backend} `{entry.model}`). {charge}"
        )
        if not records:
            return text + " No candidate had been made yet; send your message again to redo it."
        prompt = records[0].prompt_typed.strip()
        shown = f"{prompt} " if prompt and "--" not in prompt and "\n" not in prompt else ""
        return (
            f"{text}\n\nIt had made {len(records)} candidate(s), kept and shown here: "
            f"{named}. `/curate {shown}--images {','.join(ids)}` ranks the candidates that "
            "were made (add `--keep N` or `--style NAME` as before); sending your message "
            "again starts over."
        )
    text = (
        f"**Your {entry.what} request was interrupted**{message}: the app stopped while it "
        f"ran ({entry.backend} `{entry.model}`). {charge}"
    )
    if records:
        text += f"\n\nIt had already stored {named} (shown here)."
    return text + " Send your message again to redo it."


def _command(chip: str | None, text: str) -> tuple[str, str]:
    """The command (a chip from the menu, or typed) and its text."""
    if chip:
        return chip.lower(), text
    head, newline, tail = text.partition("\n")
    if not head.lstrip("/").strip():  # "/" alone on the first line: not a command
        return commands.split_slash(text)
    name, rest = commands.split_slash(head)
    return name, f"{rest}\n{tail}" if newline else rest


TYPED_LIST = "typed list.txt"


def _typed_list(ctx: ToolContext, text: str) -> tuple[ToolContext, str]:
    """`/batch --style crayon` and a list on the lines below: the options stay the
    command's text (one line, as every command takes them), the lines are the list."""
    first, _, lines = text.partition("\n")
    files = (*ctx.turn.attached_files, (TYPED_LIST, lines.encode()))
    return replace(ctx, turn=replace(ctx.turn, attached_files=files)), first


def _list_note(files: list[tuple[str, bytes]]) -> str:
    names = ", ".join(name for name, _ in files)
    return (
        f"\n\n[Attached list: {names}. start_batch called without items or text makes "
        "one image of each of its rows.]"
    )


def _quote(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _agent_turn(
    runtime: Runtime, ctx: ToolContext, message: cl.Message, text: str, loras: list[LoraRecord]
) -> None:
    # One more than the history keeps: the message being answered is among them.
    steps = await runtime.data_layer.recent_messages(message.thread_id, MAX_HISTORY_STEPS + 1)
    history = history_from_steps(steps, message.id)
    services, turn = runtime.services, ctx.turn
    images = await services.images.for_thread(turn.thread_id, turn.user_id)
    verdicts = await services.curation_store().verdicts_for_thread(turn.thread_id, turn.user_id)
    messages = build_messages(history, images, text, services.styles.names(), verdicts, loras)
    await agent.run_turn(runtime.settings, ctx, messages)
