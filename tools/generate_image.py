"""generate_image: text to image on the conversation's backend, recorded with lineage."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from memory.images import NewImage
from pipelines.base import ImageRequest
from tools.context import ToolArtifact, ToolContext


class GenerateImageArgs(BaseModel):
    prompt: str = Field(description="What the image should show, in full; be specific.")
    n: int = Field(1, description="How many images to make (1-4).")
    size: str | None = Field(
        None,
        description="WIDTHxHEIGHT, e.g. 1024x1024 (square), 1536x1024 (wide), 1024x1536 (tall).",
    )
    quality: str | None = Field(None, description="low, medium, high or auto.")
    seed: int | None = Field(None, description="Seed for reproducible results, if supported.")


DESCRIPTION = (
    "Generate new images from a text prompt. Use it whenever the user asks for a picture. "
    "To change an earlier image, write a new full prompt based on that image's prompt."
)


async def generate_image(
    ctx: ToolContext,
    prompt: str,
    n: int = 1,
    size: str | None = None,
    quality: str | None = None,
    seed: int | None = None,
) -> tuple[str, ToolArtifact]:
    backend = ctx.backends.get(ctx.backend_id)
    started = time.perf_counter()
    result = await backend.generate(
        ImageRequest(prompt=prompt, n=n, size=size, quality=quality, seed=seed)
    )
    duration_ms = int((time.perf_counter() - started) * 1000)
    artifact = ToolArtifact()
    if seed is not None and not result.seed_honoured:
        artifact.notes.append(
            f"{backend.label} has no seed parameter: seed {seed} was recorded but not used, "
            "so this image cannot be reproduced exactly."
        )
    parameters = {**result.parameters, "usage": result.usage, "seed_requested": seed}
    for image in result.images:
        record, stored = await ctx.images.record(
            ctx.thread_id,
            ctx.user_id,
            NewImage(
                data=image.data,
                mime=image.mime,
                width=image.width,
                height=image.height,
                prompt_typed=prompt,
                prompt_sent=result.prompt_sent,
                backend=result.backend,
                model=result.model,
                parameters=parameters,
                seed=image.seed,
                message_id=ctx.message_id,
                duration_ms=duration_ms,
            ),
        )
        artifact.images.append((record, stored))
    ids = ", ".join(record.id for record, _ in artifact.images)
    first = artifact.images[0][0]
    text = (
        f"Generated {len(artifact.images)} image(s) [{ids}] at {first.width}x{first.height} "
        f"with {backend.label} for the prompt: {result.prompt_sent}"
    )
    if artifact.notes:
        text += "\nNote: " + " ".join(artifact.notes)
    return text, artifact
