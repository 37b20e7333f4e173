"""check_quality: the curation checks on any one image, with a short report."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, Field

from pipelines.scoring import image_scoring
from tools import image_jobs
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class CheckQualityArgs(BaseModel):
    image_id: Annotated[str | None, Option(image=True)] = Field(
        None, description="The image to check; omit for the conversation's most recent one."
    )
    style: str | None = Field(None, description="Judge it as this style preset (e.g. crayon).")
    criteria: list[str] | None = Field(None, description="Only these checks.")


DESCRIPTION = (
    "Check an image's quality: text-image agreement with its prompt, background, "
    "centring, single object, sharpness, coverage — each with pass/fail and a reason."
)


async def _check_quality(ctx: ToolContext, args: CheckQualityArgs) -> tuple[str, ToolArtifact]:
    record = await ctx.image(args.image_id)
    chosen = ctx.services.styles.get(args.style) if args.style else None
    weights = image_scoring.weights_for(args.criteria, chosen.weights if chosen else None)
    # A stand-alone check reports every rule the user might care about.
    if not args.criteria and not chosen:
        weights = {**{name: 1.0 for name in image_scoring.CHECKS}, **weights}
    data = (await image_jobs.input_image(ctx, record)).data
    prompt = record.prompt_sent or record.prompt_typed
    if not prompt:  # an upload has no prompt to agree with
        weights.pop(image_scoring.CLIP, None)
    ranked, notes, _ = await asyncio.to_thread(
        image_scoring.score_images,
        [data],
        prompt,
        weights,
        image_scoring.clip_for(ctx.services.clip_model, ctx.services.clip_remote),
    )
    scored = ranked[0]
    await ctx.services.curation_store().record_scores(
        record.id,
        ctx.turn.user_id,
        list(scored.scores),
    )
    lines = [f"**Quality of `{record.id[:8]}`** — combined {scored.combined:.2f}"]
    for s in scored.scores:
        mark = "score" if s.passed is None else ("ok" if s.passed else "**fail**")
        lines.append(f"- {mark} **{s.criterion}** {s.score:.2f}: {s.reason}")
    lines += [f"_{note}_" for note in notes]
    failed = [s.criterion for s in scored.scores if s.passed is False]
    text = (
        f"Checked image {record.id}: combined {scored.combined:.2f}; "
        + (f"failed: {', '.join(failed)}." if failed else "passed every check.")
        + " "
        + " ".join(s.reason for s in scored.scores if s.passed is False)
    )
    return text, ToolArtifact(text="\n".join(lines))


check_quality = Tool(
    name="check_quality",
    description=DESCRIPTION,
    args=CheckQualityArgs,
    run=_check_quality,
    commands=(
        Command(
            "check",
            "scan-search",
            "Check an image's quality: /check [ID] [--style crayon]",
            text="image_id",
        ),
    ),
)
