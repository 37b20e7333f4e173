"""fork_image: go back to any earlier image and redo it with some settings changed."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext


class ForkImageArgs(BaseModel):
    image_id: str = Field(description="The earlier image to start from.")
    prompt: str | None = Field(None, description="A new full prompt; omit to keep the old one.")
    size: str | None = Field(None, description="New WIDTHxHEIGHT, e.g. 1536x1024 for wider.")
    quality: str | None = Field(None, description="New quality.")
    seed: int | None = Field(None, description="New seed (omit to keep the old one).")
    steps: int | None = Field(None, description="New step count (diffusion models).")
    guidance: float | None = Field(None, description="New guidance scale (diffusion models).")
    negative_prompt: str | None = Field(None, description="New negative prompt.")
    n: int = Field(1, description="How many images (1-4).")
    backend: str | None = Field(
        None, description="Another backend/model to redo it with, e.g. 'replicate:owner/name'."
    )


DESCRIPTION = (
    "Fork from an earlier image: regenerate it with changed settings (size, prompt, seed, "
    "backend, ...), keeping everything else as it was. Use it for 'go back to the second "
    "one and make it wider'. The result is recorded as derived from that image."
)


async def fork_image(
    ctx: ToolContext,
    image_id: str,
    prompt: str | None = None,
    size: str | None = None,
    quality: str | None = None,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str | None = None,
    n: int = 1,
    backend: str | None = None,
) -> tuple[str, ToolArtifact]:
    source = await ctx.image(image_id)
    if source.backend == "upload" and not prompt:
        raise InvalidInput(
            "That image was uploaded, so it has no prompt to redo; give a prompt, or use "
            "edit_image on it."
        )
    inherited = image_jobs.replay_request(source)
    if seed is None and source.seed is not None:
        inherited["seed"] = source.seed
    spec = backend or (None if source.backend == "upload" else f"{source.backend}:{source.model}")
    planned = image_jobs.plan(
        ctx,
        prompt or source.prompt_sent,
        spec,
        inherited=inherited,
        use_panel=False,
        n=n,
        size=size,
        quality=quality,
        seed=seed,
        steps=steps,
        guidance=guidance,
        negative_prompt=negative_prompt,
    )
    changed = {
        k: v
        for k, v in {
            "prompt": prompt,
            "size": size,
            "quality": quality,
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "negative_prompt": negative_prompt,
            "backend": backend,
        }.items()
        if v is not None
    }
    planned = await image_jobs.with_replayed_inputs(ctx, planned, source)
    artifact = await image_jobs.run(
        ctx,
        planned,
        prompt_typed=prompt or source.prompt_typed,
        parent_id=source.id,
        lineage={"operation": "fork", "source": source.id, "changed": changed},
        seed_requested=planned.request.seed,
    )
    return image_jobs.summary("Forked into", artifact, planned.label), artifact
