"""Storing one provider request's images with their full request, lineage and cost.

Every image keeps what is needed to redo it (`REPLAYABLE` request fields, inputs,
seed asked and honoured) and its share of the request's cost, to the micro-dollar, so
the shares add up to exactly what the ledger settles.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from core import money
from memory.images import ImageRecord, NewImage
from pipelines.images.base import ImageRequest, ImageResult
from tools import spending
from tools.context import ToolContext

if TYPE_CHECKING:
    from tools.image_jobs import Plan

# Keys of ImageRequest that are stored with every image, so a fork can replay it.
REPLAYABLE = (
    "size",
    "quality",
    "steps",
    "guidance",
    "strength",
    "scheduler",
    "negative_prompt",
    "background",
    "output_format",
)


class Recorder:
    """Stores one request's images with its full request, lineage and cost, and records
    that cost on the call's charge."""

    def __init__(
        self,
        ctx: ToolContext,
        planned: Plan,
        prompt_typed: str,
        parent_id: str | None,
        lineage: dict[str, Any] | None,
        seed_requested: int | None,
        charge: spending.Charge | None,
    ) -> None:
        self.ctx, self.planned, self.prompt_typed = ctx, planned, prompt_typed
        self.parent_id, self.lineage, self.charge = parent_id, lineage, charge
        self.seed_requested = seed_requested

    async def __call__(
        self, made: tuple[ImageResult, int], request: ImageRequest, notes: list[str]
    ) -> list[tuple[ImageRecord, bytes]]:
        ctx, (result, duration_ms) = self.ctx, made
        backend = self.planned.backend
        if self.seed_requested is not None and not result.seed_honoured:
            note = (
                f"{backend.label} {result.model} has no seed parameter: seed "
                f"{self.seed_requested} was recorded but not used, so this image cannot be "
                "reproduced exactly."
            )
            if note not in notes:
                notes.append(note)
        parameters = self._parameters(result, request)
        costs_each: list[Decimal | None] = [None] * len(result.images)
        cost = None
        if ctx.services.prices is not None and result.images:
            cost = ctx.services.prices.actual(
                result.backend,
                result.model,
                n=len(result.images),
                quality=request.quality,
                size=request.size,
                usage=result.usage,
                metrics=result.metrics,
                gpu_seconds=duration_ms / 1000 if result.backend == "local" else None,
            )
            parameters["cost"] = {
                "usd": str(cost.usd),
                "source": cost.source,
                "unpriced": cost.unpriced,
                "lines": cost.lines,
            }
            if not cost.unpriced:
                # Shares to the micro-dollar that add up to exactly what the ledger settles.
                costs_each = list(money.split(cost.usd, len(result.images)))
        images: list[tuple[ImageRecord, bytes]] = []
        for image, cost_each in zip(result.images, costs_each, strict=True):
            images.append(
                await ctx.services.images.record(
                    ctx.turn.thread_id,
                    ctx.turn.user_id,
                    NewImage(
                        data=image.data,
                        mime=image.mime,
                        width=image.width,
                        height=image.height,
                        prompt_typed=self.prompt_typed,
                        prompt_sent=result.prompt_sent,
                        backend=result.backend,
                        model=result.model,
                        parameters=parameters,
                        seed=image.seed,
                        parent_id=self.parent_id,
                        message_id=ctx.turn.message_id,
                        duration_ms=duration_ms,
                        cost_usd=cost_each,
                        batch_id=ctx.turn.batch_id,
                    ),
                )
            )
        if self.charge is not None and cost is not None:
            self.charge.record(cost, image_id=images[0][0].id, units=len(result.images))
        return images

    def _parameters(self, result: ImageResult, request: ImageRequest) -> dict[str, Any]:
        replay = {k: getattr(request, k) for k in REPLAYABLE if getattr(request, k) is not None}
        if request.loras:
            replay["loras"] = [[lora.name, lora.weight] for lora in request.loras]
        parameters = {
            **result.parameters,
            "request": replay,
            "usage": result.usage,
            "metrics": result.metrics or None,
            "seed_requested": self.seed_requested,
            "seed_honoured": result.seed_honoured,
            **({"lineage": self.lineage} if self.lineage else {}),
        }
        if request.images:
            # Which stored images went in, so variations and forks can replay the edit.
            parameters["inputs"] = {
                "images": [image.image_id for image in request.images],
                "mask": request.mask.image_id if request.mask else None,
            }
        return parameters
