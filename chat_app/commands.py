"""Chainlit commands (`/image`, `/help`), which also make up command mode (no LLM)."""

from __future__ import annotations

import re
from typing import Any

from chat_app import rendering
from chat_app.tool_runner import run_tool_call
from memory.errors import InvalidInput
from tools.context import ToolContext
from tools.registry import build_tools

COMMANDS: list[dict[str, Any]] = [
    {
        "id": "image",
        "icon": "image",
        "description": "Make an image: /image a fox in the snow --size 1536x1024 --n 2",
        "button": True,
        "persistent": False,
    },
    {
        "id": "help",
        "icon": "circle-help",
        "description": "What Atelier can do and how to use it",
        "button": False,
        "persistent": False,
    },
]

_FLAG = re.compile(r"(?:^|\s)--([A-Za-z_]+)(?:[ =](\S+))?")
_INT_FLAGS = {"n", "seed"}
_TEXT_FLAGS = {"size", "quality"}

HELP = """**Commands**
- `/image <prompt>` makes an image. Options: `--size 1024x1024|1536x1024|1024x1536`,
  `--n 1-4`, `--quality low|medium|high`, `--seed N`.
- `/help` shows this.

With a chat model configured you can also just ask, e.g.
*paint a lighthouse at dusk, then make it wider*.
Every image, prompt and setting is saved with the conversation in the sidebar."""


def parse_image_args(text: str) -> dict[str, Any]:
    """Split `/image` text into prompt and `--flag value` options, refusing unknown ones."""
    args: dict[str, Any] = {}
    for match in _FLAG.finditer(text):
        name, value = match.group(1).lower(), match.group(2)
        if name not in _INT_FLAGS | _TEXT_FLAGS:
            raise InvalidInput(f"Unknown option --{name}. Options: --size, --n, --quality, --seed.")
        if value is None:
            raise InvalidInput(f"Option --{name} needs a value, e.g. --{name} 2.")
        if name in _INT_FLAGS:
            if not re.fullmatch(r"\d{1,19}", value):
                raise InvalidInput(f"Option --{name} takes a whole number, not {value!r}.")
            args[name] = int(value)
        else:
            args[name] = value
    prompt = _FLAG.sub(" ", text).strip()
    if not prompt:
        raise InvalidInput("Say what the image should show, e.g. /image a fox in the snow.")
    args["prompt"] = prompt
    return args


def split_slash(text: str) -> tuple[str, str]:
    """'/image a fox' -> ('image', 'a fox')."""
    name, _, rest = text[1:].partition(" ")
    return name.strip().lower(), rest.strip()


async def run(ctx: ToolContext, name: str, text: str) -> None:
    if name == "help":
        await rendering.notice(HELP)
        return
    if name == "image":
        tools = {tool.name: tool for tool in build_tools(ctx)}
        call = {"name": "generate_image", "args": parse_image_args(text), "id": "command"}
        await run_tool_call(tools, ctx, call)
        return
    known = ", ".join(f"/{c['id']}" for c in COMMANDS)
    raise InvalidInput(f"Unknown command /{name[:40]}. Commands: {known}.")
