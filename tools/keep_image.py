"""keep_image: the user overrules a curation ("keep the third one instead")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from tools import curate_images
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class KeepImageArgs(BaseModel):
    image_id: Annotated[str, Option(image=True)] = Field(
        description="The candidate to keep (its full id from the curation)."
    )


DESCRIPTION = (
    "Overrule a curation: keep this candidate instead of (or besides) what the scores "
    "chose. The choice is stored; if the curation already keeps its maximum, the "
    "lowest-ranked image kept by the scores is dropped."
)


async def _keep_image(ctx: ToolContext, args: KeepImageArgs) -> tuple[str, ToolArtifact]:
    await ctx.image(args.image_id)  # not found unless it is this user's image
    curation, displaced = await ctx.services.curation_store().overrule(
        args.image_id, ctx.turn.user_id
    )
    note = f"Image {displaced[:8]} is no longer kept." if displaced else ""
    text = curate_images.describe(curation, [note] if note else [])
    return (
        f"Kept image {args.image_id} by the user's choice. {note}\n"
        + curate_images.summary(curation),
        ToolArtifact(text=text),
    )


keep_image = Tool(
    name="keep_image",
    description=DESCRIPTION,
    args=KeepImageArgs,
    run=_keep_image,
    commands=(
        Command(
            "keep",
            "check",
            "Overrule a curation: /keep ID",
            text="image_id",
            needs_text="Name the candidate to keep, e.g. /keep 1a2b3c4d.",
        ),
    ),
)
