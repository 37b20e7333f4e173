"""variations: more of the same — an earlier image's prompt and settings, new seeds."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class VariationsArgs(BaseModel):
    image_id: Annotated[str | None, Option(image=True)] = Field(
        None, description="The image to vary; omit for the conversation's most recent image."
    )
    n: int = Field(2, description="How many variations (1-4).")


DESCRIPTION = (
    "Make n variations of an earlier image: the same prompt, backend and settings with new "
    "seeds. Each is recorded as derived from that image."
)


async def _variations(ctx: ToolContext, args: VariationsArgs) -> tuple[str, ToolArtifact]:
    source = await ctx.image(args.image_id)
    if source.backend == "upload":
        raise InvalidInput(
            "That image was uploaded, so there is no prompt to vary; use edit_image on it "
            "instead (e.g. 'make a version of it in watercolour')."
        )
    planned = image_jobs.plan(
        ctx,
        source.prompt_sent,
        f"{source.backend}:{source.model}",
        inherited=image_jobs.replay_request(source),
        use_panel=False,
        n=args.n,
    )
    planned = await image_jobs.with_replayed_inputs(ctx, planned, source)
    artifact = await image_jobs.run(
        ctx,
        planned,
        prompt_typed=source.prompt_typed,
        parent_id=source.id,
        lineage={"operation": "variations", "source": source.id},
    )
    return image_jobs.summary("Made variations:", artifact, planned.label), artifact


variations = Tool(
    name="variations",
    description=DESCRIPTION,
    args=VariationsArgs,
    run=_variations,
    commands=(
        Command(
            "variations", "copy", "More like an image: /variations [ID] --n 3", text="image_id"
        ),
    ),
)
