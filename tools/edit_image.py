"""edit_image: change an existing image ("make it bluer"), keeping it as the parent.

Backends edit in one of two ways. Instruction editors (OpenAI edits, flux-kontext) take
the instruction as it is. img2img backends re-render from a full description, so they
get the source's prompt with the instruction appended. When the chosen model cannot
edit at all, a backend may name an `edit_model` to use instead; otherwise the user is
told which backends can.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from memory.images import ImageRecord
from pipelines.images.base import Capabilities
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class EditImageArgs(BaseModel):
    instruction: str = Field(description="The change to make, e.g. 'make the sky bluer'.")
    image_id: Annotated[str | None, Option(flag="image", image=True)] = Field(
        None, description="The image to edit; omit for the conversation's most recent image."
    )
    mask_id: Annotated[str | None, Option(flag="mask", image=True)] = Field(
        None,
        description="An uploaded mask image (same size; transparent = repaint) to limit the edit.",
    )
    extra_image_ids: Annotated[list[str], Option(flag="extra", image=True)] = Field(
        default_factory=list, description="More reference images (backends that take several)."
    )
    strength: float | None = Field(
        None, description="How far img2img may move from the source (0-1], local/diffusion."
    )
    seed: int | None = Field(None, description="Seed, if the backend supports it.")
    backend: str | None = Field(None, description="Only when the user asks for a backend.")


DESCRIPTION = (
    "Edit an existing image: 'make it bluer', 'add a hat', 'remove the background'. Edits "
    "the most recent image unless image_id names another (including uploaded images). "
    "The result is recorded as derived from the source and shown beside it."
)


async def _edit_image(ctx: ToolContext, args: EditImageArgs) -> tuple[str, ToolArtifact]:
    return await edit(ctx, args)


async def edit(ctx: ToolContext, args: EditImageArgs, **asked: Any) -> tuple[str, ToolArtifact]:
    """The edit, with `asked` options (n, size, quality, background, output_format) for
    callers that take them (the HTTP API); the chat's tool asks for none of them, so an
    edit there keeps the source's size."""
    instruction = args.instruction.strip()
    if not instruction:
        raise InvalidInput("Say what to change, e.g. 'make the sky bluer'.")
    source = await ctx.image(args.image_id)
    extras = [await ctx.image(extra) for extra in args.extra_image_ids or []]
    mask = await ctx.image(args.mask_id) if args.mask_id else None
    planned = image_jobs.plan(
        ctx, instruction, args.backend, strength=args.strength, seed=args.seed, **asked
    )
    caps = planned.backend.capabilities(planned.request.model)
    edit_model = getattr(planned.backend, "edit_model", None)
    if caps.edit == "none" and edit_model:
        planned = image_jobs.plan(
            ctx,
            instruction,
            f"{planned.backend.id}:{edit_model}",
            strength=args.strength,
            seed=args.seed,
            **asked,
        )
        caps = planned.backend.capabilities(edit_model)
    if caps.edit == "none":
        able = [b.id for b in ctx.services.backends.available() if b.capabilities().edit != "none"]
        raise InvalidInput(
            f"{planned.label} cannot edit images. "
            + (
                f"Backends that can: {', '.join(able)} (say e.g. 'edit it with {able[0]}')."
                if able
                else "No configured backend can edit images."
            )
        )
    prompt = instruction
    if caps.edit == "img2img" and source.prompt_sent:
        prompt = f"{source.prompt_sent.rstrip('. ')}. {instruction}"
    images = [await image_jobs.input_image(ctx, record) for record in (source, *extras)]
    request = replace(
        planned.request,
        prompt=prompt,
        images=tuple(images),
        mask=await image_jobs.input_image(ctx, mask) if mask else None,
    )
    # An edit keeps the source's size when the model can make it, unless a size was asked.
    if not asked.get("size"):
        request = replace(request, size=_source_size(caps, source) or request.size)
    planned = replace(planned, request=request)
    artifact = await image_jobs.run(
        ctx,
        planned,
        prompt_typed=instruction,
        parent_id=source.id,
        lineage={
            "operation": "edit",
            "source": source.id,
            "references": [r.id for r in extras],
            "mask": mask.id if mask else None,
        },
        seed_requested=args.seed,
    )
    artifact.before.append((source, images[0].data))
    return image_jobs.summary("Edited into", artifact, planned.label), artifact


def _source_size(caps: Capabilities, source: ImageRecord) -> str | None:
    """Keep the source's size when the model can make it; else the model's default."""
    size = f"{source.width}x{source.height}"
    return size if caps.allows_size(size) else None


edit_image = Tool(
    name="edit_image",
    description=DESCRIPTION,
    args=EditImageArgs,
    run=_edit_image,
    commands=(
        Command(
            "edit",
            "pencil",
            "Edit the latest image: /edit make the sky bluer [--image ID] [--mask ID]",
            text="instruction",
            needs_text="Say what to change, e.g. /edit make the sky bluer.",
        ),
    ),
)
