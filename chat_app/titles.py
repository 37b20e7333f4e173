"""Conversation titles from what the first message means, not from how it was typed.

Chainlit names a conversation after its first message as typed, so the sidebar showed
`/image a fox --n 4 --size 1024x1024`, and an empty "Untitled Conversation" for a
command picked from the `/` menu. After the first reply, in the background (the turn
never waits for it), the name becomes:

- the prompt without the command word and its options, trimmed to `MAX_TITLE`
  characters (`a fox`); a command with no prompt is named by what it does;
- with a chat model configured, a message too long to be its own title is summed up by
  the model in one cheap, tool-less call (`TITLE_INSTRUCTIONS`); a short one already
  is its title, and costs nothing.

Only a name that is still Chainlit's is replaced (memory/thread_titles.py), so a
conversation the user renamed keeps their name, and a resumed one is left alone. The
open page's sidebar is told to reload its list (Chainlit's `first_interaction` event,
which its front end answers by fetching the list again).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import chainlit as cl

from chat_app.commands import split_slash
from chat_app.runtime import Runtime
from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory import thread_titles
from tools import registry

log = get_logger(__name__)

MAX_TITLE = 60
FIRST_NAME_WAIT_S = 15.0  # how long Chainlit's own naming of a new conversation may take
FIRST_NAME_POLL_S = 0.25
LLM_TIMEOUT_S = 30
LLM_INPUT_CHARS = 2000
TITLE_INSTRUCTIONS = (
    "Write a short title (at most six words) for a conversation with an image-making "
    "assistant that opens with the user's message below. Name what they want, not how "
    "they asked. Answer with the title only: no quotes, no full stop, no preamble."
)
# Commands that make nothing, named by what they show.
COMMAND_TITLES = {
    "help": "Help",
    "cost": "Spending report",
    "styles": "Style presets",
    "loras": "Your LoRAs",
    "backend": "Backend settings",
    "tokens": "API tokens",
}
_SESSION_KEY = "conversation_title_checked"
_OPTION = re.compile(r"(?:^|\s)--[\w-]+(?:=\S*|\s+(?!--)\S+)?")
_running: set[asyncio.Task[None]] = set()


def from_message(text: str, command: str | None = None) -> str:
    """The title a message gives without a chat model.

    `/image a fox --n 4` and the `/image` chip with `a fox` give "a fox"; `/cost` gives
    "Spending report"; plain text is its own title, trimmed.
    """
    return trim(meaning(text, command))


def meaning(text: str, command: str | None = None) -> str:
    """What a message asks for, untrimmed: its prompt without the command and options,
    or what a command without a prompt does."""
    text = (text or "").strip()
    if command:
        name, rest = command.strip().lower(), text
    elif text.startswith("/"):
        name, rest = split_slash(text)
    else:
        return text
    if name in COMMAND_TITLES:
        return COMMAND_TITLES[name]
    if name == "train" and rest.lower().split()[:1] == ["status"]:
        return "Training status"
    found = registry.find_command(name, rest)
    if found is None:
        return _without_options(rest) or f"/{name}"
    entry, tool, remainder = found
    # The words the command takes as its prompt (not a count, as `/estimate 20` has).
    worded = any(o.field == entry.text and o.kind == "text" for o in tool.options.values())
    try:
        value = tool.parse(entry, remainder).get(entry.text) if worded else None
    except InvalidInput:  # the command refused it; its words still say what was meant
        value = _without_options(remainder)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return entry.summary.partition(":")[0].strip() or f"/{entry.name}"


def trim(text: str, limit: int = MAX_TITLE) -> str:
    """One line of at most `limit` characters, cut at a word with an ellipsis."""
    text = " ".join(text.split()).strip(" \"'`“”‘’")
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return cut.rstrip(" ,;:.-") + "…"


def needs_model(text: str, command: str | None = None) -> bool:
    """Whether what a message asks is too long to be its own title (then a chat model
    sums it up); a short one is its own title already."""
    asked = meaning(text, command)
    return len(" ".join(asked.split())) > MAX_TITLE or "\n" in asked


def tidy(answer: str) -> str:
    """A model's title as shown: first line, no quotes, label or final full stop."""
    line = next((part for part in answer.strip().splitlines() if part.strip()), "")
    line = re.sub(r"^\s*(?:title|conversation title)\s*:\s*", "", line, flags=re.I)
    return trim(line.strip().strip(" \"'`“”*#").rstrip("."))


def _without_options(text: str) -> str:
    return _OPTION.sub(" ", f" {text}").strip()


def schedule(
    runtime: Runtime, *, user_id: str, thread_id: str, typed: str, command: str | None
) -> None:
    """Title the conversation after this turn, in the background; once per session.

    `typed` is the message as Chainlit stored it (its text without a command chip),
    which is the name Chainlit gave a conversation this message opened.
    """
    if cl.user_session.get(_SESSION_KEY):
        return
    cl.user_session.set(_SESSION_KEY, True)
    emitter = cl.context.emitter
    task = asyncio.create_task(
        _title(runtime, emitter, user_id, thread_id, typed or "", command),
        name="conversation-title",
    )
    _running.add(task)
    task.add_done_callback(_running.discard)


async def _title(
    runtime: Runtime, emitter: Any, user_id: str, thread_id: str, typed: str, command: str | None
) -> None:
    try:
        await name_conversation(runtime, emitter, user_id, thread_id, typed, command)
    except Exception:  # a bug: the conversation keeps its name; say so loudly
        log.exception("conversation_title_failed", thread_id=thread_id)


async def name_conversation(
    runtime: Runtime, emitter: Any, user_id: str, thread_id: str, typed: str, command: str | None
) -> None:
    engine = runtime.engine
    expected = typed[: thread_titles.MAX_NAME]
    if await _first_name(engine, thread_id, user_id) != expected:
        return  # renamed by the user, or not the message that opened this conversation
    title = from_message(typed, command)
    if title and title != expected:
        if not await thread_titles.rename_if_unchanged(
            engine, thread_id, user_id, expected=expected, name=title
        ):
            log.info("conversation_title_kept", reason="renamed meanwhile")
            return
        expected = title
        await _tell_sidebar(emitter, thread_id, title)
    rewrite = runtime.services.rewrite
    if rewrite is None or not needs_model(typed, command):
        return
    try:
        answer = await asyncio.wait_for(
            rewrite(TITLE_INSTRUCTIONS, typed[:LLM_INPUT_CHARS]), LLM_TIMEOUT_S
        )
    except (AtelierError, TimeoutError) as exc:
        log.info("conversation_title_model_failed", error=type(exc).__name__)
        return
    written = tidy(answer)
    if not written or written == expected:
        return
    if await thread_titles.rename_if_unchanged(
        engine, thread_id, user_id, expected=expected, name=written
    ):
        log.info("conversation_titled", by="chat model")
        await _tell_sidebar(emitter, thread_id, written)
    else:
        log.info("conversation_title_kept", reason="renamed meanwhile")


async def _first_name(engine: Any, thread_id: str, user_id: str) -> str | None:
    """The conversation's name once Chainlit has written its first one.

    Chainlit names a new conversation in a task of its own (`init_thread`), which races
    this one: on a busy server a quick command's turn could end before that write, and
    the title was then skipped, leaving a conversation opened from the `/` menu out of
    the sidebar (Chainlit only reloads the list for a message with text). So a missing
    name is waited for, briefly; a name that differs is the user's, at once.
    """
    name = await thread_titles.name_of(engine, thread_id, user_id)
    waited = 0.0
    while name is None and waited < FIRST_NAME_WAIT_S:
        await asyncio.sleep(FIRST_NAME_POLL_S)
        waited += FIRST_NAME_POLL_S
        name = await thread_titles.name_of(engine, thread_id, user_id)
    return name


async def _tell_sidebar(emitter: Any, thread_id: str, title: str) -> None:
    """The open page reloads its conversation list (nothing to do if it has gone)."""
    try:
        await emitter.emit("first_interaction", {"interaction": title, "thread_id": thread_id})
    except Exception as exc:  # the socket closed meanwhile: the next page load shows it
        log.info("conversation_title_not_shown", error=type(exc).__name__)
