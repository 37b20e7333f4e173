"""curate_images: generate N candidates (or take existing ones), score, keep the best.

Every candidate is recorded (nothing made is thrown away), shown in a grid with its
scores, and given a verdict with a reason; the verdicts are stored so the user can
overrule them (keep_image) and a resumed thread shows the same result.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, Field

from core.errors import InvalidInput
from memory.curations import CandidateRecord, CurationRecord
from pipelines.scoring import image_scoring
from tools import image_jobs, spending
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool


class CurateImagesArgs(BaseModel):
    prompt: str | None = Field(
        None, description="What to draw; omit when ranking existing images (image_ids)."
    )
    n: int = Field(4, description="How many candidates to generate (1-16).")
    keep: int = Field(1, description="How many of the best to keep.")
    criteria: list[str] | None = Field(
        None,
        description=(
            "Checks to rank by, from: clip, background, centring, single_object, sharpness, "
            "coverage. Omit to use the style's weights."
        ),
    )
    style: str | None = Field(
        None, description="A style preset (e.g. crayon): its template and ranking weights."
    )
    image_ids: Annotated[list[str] | None, Option(flag="images", image=True)] = Field(
        None, description="Rank these existing images instead of generating new ones."
    )
    size: str | None = Field(None, description="WIDTHxHEIGHT of generated candidates.")


DESCRIPTION = (
    "Make several candidates, score them (text-image agreement and checks such as white "
    "background, centring, single object, sharpness, coverage) and keep the best. Use it "
    "when the user wants the best of several, or images that must meet rules (e.g. a "
    "crayon illustration of one centred object on white)."
)


async def _generate(
    ctx: ToolContext, prompt: str, n: int, size: str | None, negative: str | None
) -> ToolArtifact:
    """n candidates as one paid action: one estimate, one question, one reservation.

    They take as many requests as the model's per-request limit needs, sent in parallel
    (tools/image_jobs.py); the candidates come back in request order, and one whose
    request failed is missing (and not charged), with a note saying so.
    """
    first = image_jobs.plan(ctx, prompt, None, n=n, size=size)
    caps = first.backend.capabilities(first.request.model)
    planned = image_jobs.plan(
        ctx,
        prompt,
        None,
        n=n,
        size=size,
        negative_prompt=negative if caps.negative_prompt else None,
    )
    planned = await image_jobs.authorised(ctx, planned)
    priced = image_jobs.estimate(ctx, image_jobs.checked(planned))

    async def draw(charge: spending.Charge | None) -> ToolArtifact:
        return await image_jobs.run(
            ctx,
            planned,
            prompt_typed=prompt,
            lineage={"operation": "curation candidate"},
            charge=charge,
        )

    if priced is None:
        return await draw(None)
    async with spending.paid_action(
        ctx,
        backend=planned.backend.id,
        model=planned.request.model,
        what="curation",
        estimate=priced,
        label=f"{n} candidates with {planned.label}",
        units=n,
    ) as charge:
        return await draw(charge)


def _table(curation: CurationRecord, short: dict[str, str]) -> str:
    criteria = [c for c in image_scoring.CRITERIA if curation.weights.get(c, 0) > 0]
    head = "| # | image | verdict | score | " + " | ".join(criteria) + " |"
    rule = "|" + "---|" * (4 + len(criteria))
    lines = [head, rule]
    for candidate in curation.candidates:
        by_name = {s.criterion: s for s in candidate.scores}
        cells = []
        for criterion in criteria:
            s = by_name.get(criterion)
            if s is None:
                cells.append("–")
            elif s.passed is None:
                cells.append(f"{s.score:.2f}")
            else:
                cells.append(f"{'ok' if s.passed else '**fail**'} {s.score:.2f}")
        verdict = "**kept**" if candidate.verdict == "kept" else "rejected"
        lines.append(
            f"| {candidate.rank} | `{short[candidate.image_id]}` | {verdict} | "
            f"{candidate.combined:.2f} | " + " | ".join(cells) + " |"
        )
    why = [
        f"- #{c.rank} `{short[c.image_id]}`: {c.reason}"
        for c in curation.candidates
        if c.verdict == "rejected"
    ]
    return "\n".join(lines) + ("\n\n**Why the others lost**\n" + "\n".join(why) if why else "")


def describe(curation: CurationRecord, notes: list[str]) -> str:
    short = {c.image_id: c.image_id[:8] for c in curation.candidates}
    kept = ", ".join(f"`{short[c.image_id]}`" for c in curation.kept)
    weights = ", ".join(f"{k} ×{v:g}" for k, v in curation.weights.items() if v > 0)
    text = (
        f"**Curated {len(curation.candidates)} candidate(s), kept {kept}** "
        f"(ranked by {weights}{f'; style {curation.style}' if curation.style else ''}).\n\n"
        + _table(curation, short)
        + "\n\nSay *keep the third one instead* to overrule."
    )
    return text + "".join(f"\n\n_{note}_" for note in notes)


def summary(curation: CurationRecord) -> str:
    kept = ", ".join(c.image_id for c in curation.kept)
    lines = [
        f"Curation {curation.id}: kept [{kept}] of {len(curation.candidates)} candidates.",
        "Candidates by rank (use these ids to overrule with keep_image):",
    ]
    lines += [
        f"{c.rank}. {c.image_id} {c.verdict} score={c.combined:.2f} — {c.reason}"
        for c in curation.candidates
    ]
    return "\n".join(lines)


async def _curate_images(ctx: ToolContext, args: CurateImagesArgs) -> tuple[str, ToolArtifact]:
    chosen = ctx.services.styles.get(args.style) if args.style else None
    weights = image_scoring.weights_for(args.criteria, chosen.weights if chosen else None)
    if args.image_ids:
        if len(set(args.image_ids)) < 2:
            raise InvalidInput("Give at least two different image ids to rank.")
        image_scoring.check_count(len(args.image_ids), args.keep)
        records = [await ctx.image(image_id) for image_id in dict.fromkeys(args.image_ids)]
        candidates = [(r, await image_jobs.input_image(ctx, r)) for r in records]
        pairs = [(record, image.data) for record, image in candidates]
        made_notes: list[str] = []
        text_prompt = args.prompt or records[0].prompt_typed or records[0].prompt_sent
    else:
        if not (args.prompt or "").strip():
            raise InvalidInput("Say what to draw, e.g. 'a red apple', or give image_ids to rank.")
        image_scoring.check_count(args.n, args.keep)
        sent = chosen.apply(args.prompt) if chosen else args.prompt.strip()
        made = await _generate(ctx, sent, args.n, args.size, chosen.negative if chosen else None)
        pairs, made_notes = made.images, made.notes
        text_prompt = args.prompt.strip()
    clip = image_scoring.clip_for(ctx.services.clip_model, ctx.services.clip_remote)
    ranked, notes, weights = await asyncio.to_thread(
        image_scoring.score_images, [data for _, data in pairs], text_prompt, weights, clip
    )
    notes = [*made_notes, *notes]
    keep = min(args.keep, len(pairs))  # fewer when some candidates could not be made
    best = ranked[0]
    candidates = [
        CandidateRecord(
            image_id=pairs[item.index][0].id,
            rank=rank,
            combined=item.combined,
            verdict="kept" if rank <= keep else "rejected",
            reason="Best by the scores."
            if rank <= keep
            else image_scoring.loss_reason(item, best, weights),
            decided_by="scores",
            scores=list(item.scores),
        )
        for rank, item in enumerate(ranked, start=1)
    ]
    curation = await ctx.services.curation_store().record(
        thread_id=ctx.turn.thread_id,
        user_id=ctx.turn.user_id,
        message_id=ctx.turn.message_id,
        prompt=text_prompt,
        style=chosen.name if chosen else None,
        weights={k: v for k, v in weights.items() if v > 0},
        keep=keep,
        candidates=candidates,
    )
    order = {c.image_id: c.rank for c in curation.candidates}
    artifact = ToolArtifact(
        images=sorted(pairs, key=lambda pair: order[pair[0].id]),
        caption=describe(curation, notes),
        grid=True,
    )
    return summary(curation), artifact


curate_images = Tool(
    name="curate_images",
    description=DESCRIPTION,
    args=CurateImagesArgs,
    run=_curate_images,
    commands=(
        Command(
            "curate",
            "trophy",
            "Best of N: /curate an apple --n 6 --keep 2 --style crayon [--criteria centring,clip]",
            text="prompt",
        ),
    ),
)
