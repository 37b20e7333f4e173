"""variations: more of the same — an earlier image's prompt and settings, new seeds."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext


class VariationsArgs(BaseModel):
    image_id: str | None = Field(
        None, description="The image to vary; omit for the conversation's most recent image."
    )
    n: int = Field(2, description="How many variations (1-4).")


DESCRIPTION = (
    "Make n variations of an earlier image: the same prompt, backend and settings with new "
    "seeds. Each is recorded as derived from that image."
)


async def variations(
    ctx: ToolContext, image_id: str | None = None, n: int = 2
) -> tuple[str, ToolArtifact]:
    source = await ctx.image(image_id)
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
        n=n,
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
