"""The agent's memory of a conversation, rebuilt from what the database holds.

Rebuilding every turn (rather than keeping messages in the session) means a resumed
thread, a restarted server and a live session all give the model the same context,
and the images table tells it which image "the one from before" is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from memory.images import ImageRecord

MAX_HISTORY_STEPS = 40
MAX_IMAGES_LISTED = 20

SYSTEM_PROMPT = """You are Atelier, an assistant that makes images with tools.
When the user asks for a picture, call generate_image with a complete, specific prompt.
When they refer to an earlier image ("make it bigger", "the one from before"), find it in
the list of this conversation's images below and base the new prompt and settings on it.
Keep replies short. If a tool reports an error, explain it plainly and suggest a fix.
"""


def history_from_steps(
    steps: Sequence[dict[str, Any]], current_message_id: str | None
) -> list[BaseMessage]:
    """User and assistant turns (and tool results as assistant notes), oldest first."""
    messages: list[BaseMessage] = []
    for step in list(steps)[-MAX_HISTORY_STEPS:]:
        if step.get("id") == current_message_id:
            continue
        kind, text = step.get("type"), (step.get("output") or "").strip()
        if not text:
            continue
        if kind == "user_message":
            messages.append(HumanMessage(content=text))
        elif kind == "assistant_message":
            messages.append(AIMessage(content=text))
        elif kind == "tool":
            status = "failed" if step.get("isError") else "result"
            messages.append(AIMessage(content=f"[{step.get('name')} {status}] {text}"))
    return messages


def describe_images(images: Sequence[ImageRecord]) -> str:
    if not images:
        return "This conversation has no images yet."
    lines = ["Images in this conversation, oldest first (the last one is the most recent):"]
    for number, image in enumerate(images[-MAX_IMAGES_LISTED:], start=1):
        lines.append(
            f"{number}. id={image.id} size={image.width}x{image.height} "
            f"backend={image.backend} model={image.model} prompt={image.prompt_sent[:400]!r}"
        )
    return "\n".join(lines)


def build_messages(
    history: list[BaseMessage], images: Sequence[ImageRecord], text: str
) -> list[BaseMessage]:
    system = SystemMessage(content=SYSTEM_PROMPT + "\n" + describe_images(images))
    return [system, *history, HumanMessage(content=text)]
