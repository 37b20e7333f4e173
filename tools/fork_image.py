"""fork_image: go back to any earlier image and redo it with some settings changed."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class ForkImageArgs(BaseModel):
    image_id: Annotated[str, Option(image=True)] = Field(
        description="The earlier image to start from."
    )
    prompt: Annotated[str | None, Option(words=True)] = Field(
        None, description="A new full prompt; omit to keep the old one."
    )
    size: str | None = Field(None, description="New WIDTHxHEIGHT, e.g. 1536x1024 for wider.")
    quality: str | None = Field(None, description="New quality.")
    seed: int | None = Field(None, description="New seed (omit to keep the old one).")
    steps: int | None = Field(None, description="New step count (diffusion models).")
    guidance: float | None = Field(None, description="New guidance scale (diffusion models).")
    negative_prompt: Annotated[str | None, Option(words=True)] = Field(
        None, description="New negative prompt."
    )
    n: int = Field(1, description="How many images (1-4).")
    backend: str | None = Field(
        None, description="Another backend/model to redo it with, e.g. 'replicate:owner/name'."
    )


DESCRIPTION = (
    "Fork from an earlier image: regenerate it with changed settings (size, prompt, seed, "
    "backend, ...), keeping everything else as it was. Use it for 'go back to the second "
    "one and make it wider'. The result is recorded as derived from that image."
)


async def _fork_image(ctx: ToolContext, args: ForkImageArgs) -> tuple[str, ToolArtifact]:
    source = await ctx.image(args.image_id)
    if source.backend == "upload" and not args.prompt:
        raise InvalidInput(
            "That image was uploaded, so it has no prompt to redo; give a prompt, or use "
            "edit_image on it."
        )
    inherited = image_jobs.replay_request(source)
    if args.seed is None and source.seed is not None:
        inherited["seed"] = source.seed
    spec = args.backend or (
        None if source.backend == "upload" else f"{source.backend}:{source.model}"
    )
    planned = image_jobs.plan(
        ctx,
        args.prompt or source.prompt_sent,
        spec,
        inherited=inherited,
        use_panel=False,
        n=args.n,
        size=args.size,
        quality=args.quality,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        negative_prompt=args.negative_prompt,
    )
    changed = {
        k: v
        for k, v in {
            "prompt": args.prompt,
            "size": args.size,
            "quality": args.quality,
            "seed": args.seed,
            "steps": args.steps,
            "guidance": args.guidance,
            "negative_prompt": args.negative_prompt,
            "backend": args.backend,
        }.items()
        if v is not None
    }
    planned = await image_jobs.with_replayed_inputs(ctx, planned, source)
    artifact = await image_jobs.run(
        ctx,
        planned,
        prompt_typed=args.prompt or source.prompt_typed,
        parent_id=source.id,
        lineage={"operation": "fork", "source": source.id, "changed": changed},
        seed_requested=planned.request.seed,
    )
    return image_jobs.summary("Forked into", artifact, planned.label), artifact


fork_image = Tool(
    name="fork_image",
    description=DESCRIPTION,
    args=ForkImageArgs,
    run=_fork_image,
    commands=(
        Command(
            "fork",
            "git-branch",
            "Redo an earlier image with changes: /fork ID --size 1536x1024 [--prompt ...]",
            text="image_id",
            needs_text="Name the image to fork from, e.g. /fork 1a2b3c4d --size 1536x1024.",
        ),
    ),
)
