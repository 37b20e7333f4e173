"""The agent's tools, in the order the model sees them.

Adding a tool is one module that declares a `Tool` (tools/declaration.py: an arguments
model, a description, `run(ctx, args)` and its slash commands) plus one line here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from tools import (
    check_quality,
    curate_images,
    edit_image,
    estimate_cost,
    find_images,
    fork_image,
    generate_image,
    generate_video,
    keep_image,
    refine_prompt,
    schedule_creation,
    start_batch,
    train_lora,
    variations,
)
from tools.declaration import Command, Tool

TOOLS: tuple[Tool[Any], ...] = (
    generate_image.generate_image,
    edit_image.edit_image,
    generate_video.generate_video,
    refine_prompt.refine_prompt,
    variations.variations,
    fork_image.fork_image,
    curate_images.curate_images,
    keep_image.keep_image,
    find_images.find_images,
    estimate_cost.estimate_cost,
    check_quality.check_quality,
    train_lora.train_lora,
    train_lora.stop_training,
    train_lora.resume_training,
    schedule_creation.schedule_creation,
    schedule_creation.manage_schedules,
    start_batch.start_batch,
    start_batch.manage_batches,
)
BY_NAME: dict[str, Tool[Any]] = {tool.name: tool for tool in TOOLS}


@cache
def schemas() -> list[dict[str, Any]]:
    """What the chat model is shown: built once per process, not on every call."""
    return [tool.schema for tool in TOOLS]


def commands() -> list[tuple[Command, Tool[Any]]]:
    """Every tool's slash commands, in the tools' order."""
    return [(command, tool) for tool in TOOLS for command in tool.commands]


def find_command(name: str, text: str) -> tuple[Command, Tool[Any], str] | None:
    """`train`, `stop NAME` -> the `train stop` command and `NAME`; None if unknown."""
    word, _, rest = text.partition(" ")
    two_words = _BY_COMMAND.get(f"{name} {word.lower()}")
    if two_words is not None:
        return (*two_words, rest.strip())
    one_word = _BY_COMMAND.get(name)
    return (*one_word, text) if one_word is not None else None


_BY_COMMAND = {command.name: (command, tool) for command, tool in commands()}
