"""Slash commands, which also make up command mode (no chat model configured).

A tool's commands, their options and their lines in /help all come from the tool's one
declaration (tools/declaration.py), so `/edit` takes exactly what `edit_image` takes and
both paths share validation, recording and rendering. The few commands that are not
tools (/help, /cost, /styles, /backend, /loras, /tokens) are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chat_app import cost_report, rendering, settings_panel
from chat_app.runtime import Runtime
from chat_app.tool_runner import run_tool_call
from core.errors import InvalidInput
from tools import registry, train_lora
from tools.context import ToolContext
from tools.generate_video import LATEST as LATEST_IMAGE


@dataclass(frozen=True)
class ChatCommand:
    """A command that is not a tool: it reads or changes the chat itself."""

    name: str
    icon: str
    summary: str


CHAT_COMMANDS: list[ChatCommand] = [
    ChatCommand("loras", "layers", "List your LoRAs with their trigger words and status"),
    ChatCommand("cost", "receipt", "Spending by day, model and backend, with a chart and CSV"),
    ChatCommand("styles", "palette", "List the style presets for /refine and /curate"),
    ChatCommand("backend", "server", "Switch backend/model: /backend replicate:owner/name"),
    ChatCommand("tokens", "key", "Your API tokens: /tokens new NAME [DAYS], /tokens revoke ID"),
    ChatCommand("help", "circle-help", "What Atelier can do and how to use it"),
]
_CHAT_BY_NAME = {command.name: command for command in CHAT_COMMANDS}
HELP_FOOTER = """
Options take one word (`--size 1536x1024`); prompts run to the next option; lists are
comma-separated (`--images 1a2b3c4d,5e6f7a8b`); an image is named by its id (its first 8
characters will do), shown in its details (ⓘ). Or use the buttons on each image: Vary,
Edit, Bigger, Animate, Keep, Download. Attach an image to edit it or start from it.

With a chat model configured you can just ask: *paint a lighthouse at dusk*, *make it
bluer*, *four variations of that*, *go back to the first one and make it wider*.
Every image, prompt and setting is saved with the conversation in the sidebar."""


def help_text() -> str:
    """/help, generated from the same declarations that parse the commands."""
    lines = ["**Commands**"]
    lines += [tool.help_line(command) for command, tool in registry.commands()]
    lines.append("- `/train status` Your trainings and LoRAs.")
    lines += [f"- `/{c.name}` {c.summary}." for c in CHAT_COMMANDS]
    return "\n".join(lines) + "\n" + HELP_FOOTER


def split_slash(text: str) -> tuple[str, str]:
    """'/image a fox' -> ('image', 'a fox')."""
    name, _, rest = text[1:].partition(" ")
    return name.strip().lower(), rest.strip()


def chainlit_commands() -> list[dict[str, Any]]:
    """The `/` menu: one entry per command typed as one word."""
    menu = [
        (c.name, c.icon, c.summary, c.button) for c, _ in registry.commands() if " " not in c.name
    ]
    menu += [(c.name, c.icon, c.summary, False) for c in CHAT_COMMANDS]
    return [
        {"id": name, "icon": icon, "description": summary, "button": button, "persistent": False}
        for name, icon, summary, button in menu
    ]


async def run(runtime: Runtime, ctx: ToolContext, name: str, text: str) -> None:
    if name in _CHAT_BY_NAME:
        await _chat_command(runtime, ctx, name, text)
        return
    if name == "train" and text.partition(" ")[0].lower() == "status":
        await _chat_command(runtime, ctx, "loras", "")
        return
    found = registry.find_command(name, text)
    if found is None:
        known = ", ".join(f"/{n}" for n in dict.fromkeys(c["id"] for c in chainlit_commands()))
        raise InvalidInput(f"Unknown command /{name[:40]}. Commands: {known}.")
    command, tool, rest = found
    args = tool.parse(command, rest)
    for field in tool.image_fields() & set(args):
        value = args[field]
        if isinstance(value, list):
            args[field] = [await _full_image_id(ctx, v) for v in value]
        elif value != LATEST_IMAGE:
            args[field] = await _full_image_id(ctx, value)
    await run_tool_call(ctx, {"name": tool.name, "args": args, "id": "command"})


async def _chat_command(runtime: Runtime, ctx: ToolContext, name: str, text: str) -> None:
    if name == "help":
        await rendering.notice(help_text())
    elif name == "styles":
        await rendering.notice(
            "**Styles** (use with `/refine` or `/curate`: `--style NAME`)\n"
            + runtime.services.styles.describe()
        )
    elif name == "backend":
        await rendering.notice(await settings_panel.use_backend(runtime, text, ctx.turn.user_id))
    elif name == "loras":
        await rendering.notice("**Your LoRAs**\n\n" + await train_lora.training_status(ctx))
    elif name == "tokens":
        from chat_app import token_chat

        await token_chat.run(runtime.api_tokens, ctx.turn.user_id, text)
    elif name == "cost":
        await cost_report.show(
            runtime.services.ledger,
            user_id=ctx.turn.user_id,
            thread_id=ctx.turn.thread_id,
            operator_limits=runtime.settings.operator_limits,
            days=cost_report.parse_days(text),
        )


async def _full_image_id(ctx: ToolContext, given: str) -> str:
    """Captions show 8-character ids: this conversation's images first, then the user's."""
    given = given.strip().strip("`")
    if len(given) >= 32:
        return given
    recent = await ctx.services.images.for_thread(ctx.turn.thread_id, ctx.turn.user_id, limit=500)
    matches = [record.id for record in recent if record.id.startswith(given.lower())]
    if not matches:  # one found in another conversation (/find, the gallery)
        matches = await ctx.services.images.ids_starting_with(ctx.turn.user_id, given)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InvalidInput(f"None of your images has an id starting with {given!r}.")
    raise InvalidInput(f"Several images start with {given!r}; give more of the id.")
