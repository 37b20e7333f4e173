"""refine_prompt: rewrite a prompt (optionally in a preset style), show both, then draw.

The user sees the original and the rewrite side by side; the rewrite is what is sent
and recorded as `prompt_sent`, the original as `prompt_typed`. Without a chat model the
style's template is applied as written, so command mode gets styles too.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Tool
from tools.styles import Style

MAX_REWRITE_CHARS = 2000

INSTRUCTIONS = (
    "Rewrite the user's image prompt into one vivid, specific prompt for an image model: "
    "subject, composition, medium, lighting, colour. Keep every element the user asked "
    "for and invent nothing that contradicts it. Answer with the prompt only, no quotes, "
    "no preamble, at most 120 words."
)


class RefinePromptArgs(BaseModel):
    prompt: str = Field(description="The user's prompt, as they wrote it.")
    style: str | None = Field(
        None, description="A style preset name (crayon, watercolour, product, line-art, ...)."
    )
    generate: bool = Field(True, description="Also generate an image from the rewrite.")
    n: int = Field(1, description="How many images to make if generating (1-4).")
    size: str | None = Field(None, description="WIDTHxHEIGHT if generating.")


DESCRIPTION = (
    "Improve a prompt before drawing, optionally in a named style preset. Use it when the "
    "user asks to refine/improve a prompt or names a style. Shows the original and the "
    "rewrite, then (by default) generates from the rewrite."
)


async def rewrite(ctx: ToolContext, prompt: str, style: Style | None) -> str:
    if ctx.services.rewrite is None:
        return style.apply(prompt) if style else prompt
    instructions = INSTRUCTIONS
    if style:
        instructions += (
            f"\nStyle to apply: {style.description}. {style.guidance or ''}\n"
            f"Include these style words: {style.apply('').strip(', ')}"
        )
    text = (await ctx.services.rewrite(instructions, prompt)).strip().strip('"').strip()
    if not text:
        raise InvalidInput("The chat model returned an empty rewrite; try again.")
    return text[:MAX_REWRITE_CHARS]


async def _refine_prompt(ctx: ToolContext, args: RefinePromptArgs) -> tuple[str, ToolArtifact]:
    prompt = args.prompt.strip()
    if not prompt:
        raise InvalidInput("Give a prompt to refine, e.g. 'a red apple'.")
    chosen = ctx.services.styles.get(args.style) if args.style else None
    rewritten = await rewrite(ctx, prompt, chosen)
    shown = f"**Original:** {prompt}\n\n**Rewritten{f' ({chosen.name})' if chosen else ''}:** "
    shown += rewritten
    if not args.generate:
        return f"Rewrote the prompt to: {rewritten}", ToolArtifact(text=shown)
    negative = chosen.negative if chosen else None
    lineage = {"operation": "refine", "style": chosen.name if chosen else None}

    async def draw(negative_prompt: str | None) -> ToolArtifact:
        planned = image_jobs.plan(
            ctx, rewritten, None, n=args.n, size=args.size, negative_prompt=negative_prompt
        )
        return await image_jobs.run(
            ctx,
            planned,
            prompt_typed=prompt,
            lineage=lineage,
            seed_requested=planned.request.seed,
        )

    planned = image_jobs.plan(ctx, rewritten, None, n=args.n, size=args.size)
    if negative and planned.backend.capabilities(planned.request.model).negative_prompt:
        try:
            artifact = await draw(negative)
        except InvalidInput as exc:
            # The style's negative prompt is ours, not the user's: when the model refuses
            # it (e.g. SD-Turbo at guidance 0), draw without it and say so.
            if "negative prompt" not in exc.message:
                raise
            artifact = await draw(None)
            artifact.notes.append(f"The style's negative prompt was left out: {exc.message}")
    else:
        artifact = await draw(None)
    artifact.text = shown
    return image_jobs.summary("Generated from the refined prompt", artifact, planned.label), (
        artifact
    )


refine_prompt = Tool(
    name="refine_prompt",
    description=DESCRIPTION,
    args=RefinePromptArgs,
    run=_refine_prompt,
    commands=(
        Command(
            "refine",
            "sparkles",
            "Improve a prompt, then draw it: /refine a red apple --style crayon",
            text="prompt",
            needs_text="Give a prompt to refine, e.g. /refine a red apple --style crayon.",
        ),
    ),
)
