"""Starters on the welcome screen, built from the style presets (tools/styles.toml and
the operator's ATELIER_STYLES_FILE), so a click sends a real prompt in a real style.

With a chat model the starter is a sentence that names the style (the agent's
refine_prompt applies the preset); in command mode it is `/refine ... --style NAME`, the
same command a user would type. Either way it goes through the same turn as a typed
message: budgets and confirmations apply. No image backend, no starters: they could
only fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import chainlit as cl

if TYPE_CHECKING:
    from chat_app.runtime import Runtime

MAX_STARTERS = 4
ICONS = "/public/starters"


@dataclass(frozen=True)
class Idea:
    """A subject that suits a style, and how the starter is labelled."""

    subject: str
    label: str


# Built-in styles first, in this order, each with a subject it flatters; a style of the
# operator's own gets the generic idea.
IDEAS: dict[str, Idea] = {
    "watercolour": Idea("a lighthouse on a cliff at dusk", "Lighthouse in watercolour"),
    "photo": Idea("a red fox in fresh snow", "Photo of a fox in the snow"),
    "crayon": Idea("a red apple", "Crayon apple"),
    "line-art": Idea("a cat curled up asleep", "Line-art sleeping cat"),
    "product": Idea("a ceramic coffee mug", "Product shot of a mug"),
}
GENERIC = Idea("a lighthouse on a cliff at dusk", "Lighthouse, {style}")


def starters(runtime: Runtime) -> list[cl.Starter]:
    if not runtime.services.backends.available():
        return []
    names = runtime.services.styles.names()
    ordered = [n for n in IDEAS if n in names] + [n for n in names if n not in IDEAS]
    chat = runtime.settings.llm_configured
    return [_starter(name, chat) for name in ordered[:MAX_STARTERS]]


def _starter(style: str, chat: bool) -> cl.Starter:
    idea = IDEAS.get(style, GENERIC)
    icon = f"{ICONS}/{style if style in IDEAS else 'style'}.svg"
    label = idea.label.format(style=style)
    if chat:
        message = f"Draw {idea.subject} in the {style} style."
        return cl.Starter(label=label, message=message, icon=icon)
    return cl.Starter(
        label=label, message=f"{idea.subject} --style {style}", command="refine", icon=icon
    )
