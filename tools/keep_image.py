"""keep_image: the user overrules a curation ("keep the third one instead")."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tools import curate_images
from tools.context import ToolArtifact, ToolContext


class KeepImageArgs(BaseModel):
    image_id: str = Field(description="The candidate to keep (its full id from the curation).")


DESCRIPTION = (
    "Overrule a curation: keep this candidate instead of (or besides) what the scores "
    "chose. The choice is stored; if the curation already keeps its maximum, the "
    "lowest-ranked image kept by the scores is dropped."
)


async def keep_image(ctx: ToolContext, image_id: str) -> tuple[str, ToolArtifact]:
    await ctx.image(image_id)  # not found unless it is this user's image
    curation, displaced = await ctx.curation_store().overrule(image_id, ctx.user_id)
    note = f"Image {displaced[:8]} is no longer kept." if displaced else ""
    text = curate_images.describe(curation, [note] if note else [])
    return (
        f"Kept image {image_id} by the user's choice. {note}\n" + curate_images.summary(curation),
        ToolArtifact(text=text),
    )
