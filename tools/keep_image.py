"""keep_image: the user keeps an image (its star); for a curation's candidate that also
overrules the curation ("keep the third one instead")."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from tools import curate_images
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class KeepImageArgs(BaseModel):
    image_id: Annotated[str, Option(image=True)] = Field(
        description="The image to keep (its full id; for a curation, the candidate's)."
    )


DESCRIPTION = (
    "Keep an image the user likes: it is starred and stays starred. For a curation's "
    "candidate this also overrules the curation: it is kept instead of (or besides) what "
    "the scores chose; if the curation already keeps its maximum, the lowest-ranked image "
    "kept by the scores is dropped."
)


async def _keep_image(ctx: ToolContext, args: KeepImageArgs) -> tuple[str, ToolArtifact]:
    record = await ctx.image(args.image_id)  # not found unless it is this user's image
    if not await _is_candidate(ctx, record.id, record.thread_id):
        await ctx.services.images.keep(record.id, ctx.turn.user_id)
        return (
            f"Kept image {record.id} (starred) by the user's choice.",
            ToolArtifact(text=f"Kept image `{record.id[:8]}` ★"),
        )
    curation, displaced = await ctx.services.curation_store().overrule(record.id, ctx.turn.user_id)
    await ctx.services.images.keep(record.id, ctx.turn.user_id)  # after: a refusal keeps nothing
    note = f"Image {displaced[:8]} is no longer kept." if displaced else ""
    text = curate_images.describe(curation, [note] if note else [])
    return (
        f"Kept image {record.id} by the user's choice. {note}\n" + curate_images.summary(curation),
        ToolArtifact(text=text),
    )


async def _is_candidate(ctx: ToolContext, image_id: str, image_thread: str) -> bool:
    """Whether a curation (in the image's conversation or this one) ranked the image."""
    store = ctx.services.curations
    if store is None:
        return False
    for thread_id in dict.fromkeys((ctx.turn.thread_id, image_thread)):
        if image_id in await store.verdicts_for_thread(thread_id, ctx.turn.user_id):
            return True
    return False


keep_image = Tool(
    name="keep_image",
    description=DESCRIPTION,
    args=KeepImageArgs,
    run=_keep_image,
    commands=(
        Command(
            "keep",
            "star",
            "Keep (star) an image, or overrule a curation: /keep ID",
            text="image_id",
            needs_text="Name the image to keep, e.g. /keep 1a2b3c4d.",
        ),
    ),
)
