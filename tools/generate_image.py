"""generate_image: text to image on the conversation's backend, recorded with lineage."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from pydantic import BaseModel, Field

from pipelines.images.base import LoraSpec
from tools import image_jobs, train_lora
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class GenerateImageArgs(BaseModel):
    prompt: Annotated[str, Option(words=True)] = Field(
        description="What the image should show, in full; be specific."
    )
    n: int = Field(1, description="How many images to make (1-100; usually 1-4).")
    size: str | None = Field(
        None,
        description="WIDTHxHEIGHT, e.g. 1024x1024 (square), 1536x1024 (wide), 1024x1536 (tall).",
    )
    quality: str | None = Field(None, description="low, medium, high or auto.")
    seed: int | None = Field(None, description="Seed for reproducible results, if supported.")
    negative_prompt: Annotated[str | None, Option(words=True)] = Field(
        None, description="What to keep out of the image (backends that support it)."
    )
    steps: int | None = Field(None, description="Denoising steps (local/diffusion models).")
    guidance: float | None = Field(None, description="Guidance scale (diffusion models).")
    lora: str | None = Field(
        None, description="LoRA(s) to apply, 'name' or 'name:weight', comma-separated (local)."
    )
    background: str | None = Field(
        None, description="transparent, opaque or auto (OpenAI) — e.g. for stickers, logos."
    )
    output_format: str | None = Field(None, description="png, jpeg or webp (OpenAI).")
    backend: str | None = Field(
        None,
        description=(
            "Only when the user asks for a specific backend/model: 'openai', 'local', "
            "'replicate' or 'replicate:owner/name'. Otherwise the conversation's setting."
        ),
    )


DESCRIPTION = (
    "Generate new images from a text prompt. Use it whenever the user asks for a new "
    "picture. To change an existing image use edit_image; to redo an earlier one with "
    "other settings use fork_image; for more of the same use variations."
)


async def _generate_image(ctx: ToolContext, args: GenerateImageArgs) -> tuple[str, ToolArtifact]:
    planned = image_jobs.plan(
        ctx,
        args.prompt,
        args.backend,
        n=args.n,
        size=args.size,
        quality=args.quality,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        loras=image_jobs.parse_loras(args.lora),
        background=args.background,
        output_format=args.output_format,
    )
    if planned.backend.id == "local" and not args.lora:
        # A trained LoRA's trigger word in the prompt applies that LoRA (documented in
        # tools/train_lora.py); naming loras explicitly turns this off.
        triggered = await train_lora.triggered_loras(ctx, args.prompt)
        if triggered:
            specs = tuple(LoraSpec(record.name) for record in triggered)
            planned = replace(planned, request=replace(planned.request, loras=specs))
            names = ", ".join(f"'{r.name}' (trigger {r.trigger_word})" for r in triggered)
            planned.notes.append(f"Applied your LoRA {names}: its trigger word is in the prompt.")
    artifact = await image_jobs.run(
        ctx, planned, prompt_typed=args.prompt, seed_requested=planned.request.seed
    )
    return image_jobs.summary("Generated", artifact, planned.label), artifact


generate_image = Tool(
    name="generate_image",
    description=DESCRIPTION,
    args=GenerateImageArgs,
    run=_generate_image,
    commands=(
        Command(
            "image",
            "image",
            "Make an image: /image a fox in the snow --size 1536x1024 --n 2",
            text="prompt",
            needs_text="Say what the image should show, e.g. /image a fox in the snow.",
            button=True,
        ),
    ),
)
