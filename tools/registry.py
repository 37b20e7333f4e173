"""The agent's tools as langchain-core tools, bound to one conversation's context.

Adding a tool is one module (an args model, a description, an async function taking the
ToolContext first) plus one line in `TOOLS`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from tools import (
    check_quality,
    curate_images,
    edit_image,
    estimate_cost,
    fork_image,
    generate_image,
    generate_video,
    keep_image,
    refine_prompt,
    train_lora,
    variations,
)
from tools.context import ToolArtifact, ToolContext

ToolFunction = Callable[..., Awaitable[tuple[str, ToolArtifact]]]

TOOLS: list[tuple[str, str, type[BaseModel], ToolFunction]] = [
    (
        "generate_image",
        generate_image.DESCRIPTION,
        generate_image.GenerateImageArgs,
        generate_image.generate_image,
    ),
    ("edit_image", edit_image.DESCRIPTION, edit_image.EditImageArgs, edit_image.edit_image),
    (
        "generate_video",
        generate_video.DESCRIPTION,
        generate_video.GenerateVideoArgs,
        generate_video.generate_video,
    ),
    (
        "refine_prompt",
        refine_prompt.DESCRIPTION,
        refine_prompt.RefinePromptArgs,
        refine_prompt.refine_prompt,
    ),
    ("variations", variations.DESCRIPTION, variations.VariationsArgs, variations.variations),
    ("fork_image", fork_image.DESCRIPTION, fork_image.ForkImageArgs, fork_image.fork_image),
    (
        "curate_images",
        curate_images.DESCRIPTION,
        curate_images.CurateImagesArgs,
        curate_images.curate_images,
    ),
    ("keep_image", keep_image.DESCRIPTION, keep_image.KeepImageArgs, keep_image.keep_image),
    (
        "estimate_cost",
        estimate_cost.DESCRIPTION,
        estimate_cost.EstimateCostArgs,
        estimate_cost.estimate_cost,
    ),
    (
        "check_quality",
        check_quality.DESCRIPTION,
        check_quality.CheckQualityArgs,
        check_quality.check_quality,
    ),
    ("train_lora", train_lora.DESCRIPTION, train_lora.TrainLoraArgs, train_lora.train_lora),
    (
        "stop_training",
        train_lora.STOP_DESCRIPTION,
        train_lora.StopTrainingArgs,
        train_lora.stop_training,
    ),
    (
        "resume_training",
        train_lora.RESUME_DESCRIPTION,
        train_lora.ResumeTrainingArgs,
        train_lora.resume_training,
    ),
]


def build_tools(ctx: ToolContext) -> list[BaseTool]:
    """Tools whose results are (text for the model, artifact for the chat)."""
    tools: list[BaseTool] = []
    for name, description, args, function in TOOLS:
        bound: Callable[..., Awaitable[Any]] = functools.partial(function, ctx)
        tools.append(
            StructuredTool.from_function(
                coroutine=bound,
                name=name,
                description=description,
                args_schema=args,
                response_format="content_and_artifact",
            )
        )
    return tools
