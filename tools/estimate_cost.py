"""estimate_cost: what a request would cost, before anything runs, and what budget is left.

Answers "what would 20 high-quality images cost?" from the same price table and the same
planning (conversation settings, model defaults) that a real request would use, so the
answer matches the estimate shown when the user then asks for it.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, Field

from core import money
from core.errors import AtelierError, InvalidInput, ModelRetired
from pipelines.catalogue.pricing import Estimate
from tools import image_jobs, spending
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Tool

MAX_COUNT = 1000


class EstimateCostArgs(BaseModel):
    n: int = Field(1, description="How many images (or videos, runs) to price.")
    quality: str | None = Field(None, description="low, medium, high or auto (OpenAI).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. 1024x1024.")
    seconds: float | None = Field(
        None, description="Run time in seconds, for models billed by time (video, local GPU)."
    )
    backend: str | None = Field(
        None,
        description=(
            "'openai', 'replicate', 'local' or 'backend:model' (e.g. "
            "'replicate:minimax/video-01'); default: the conversation's setting."
        ),
    )


DESCRIPTION = (
    "Estimate what images, videos or runs would cost before making them, with the "
    "arithmetic and the budget left. Use it when the user asks what something would cost "
    "or whether they can afford it. It makes nothing and spends nothing."
)


def _check(n: int, seconds: float | None) -> None:
    if not 1 <= n <= MAX_COUNT:
        raise InvalidInput(f"n must be from 1 to {MAX_COUNT}; {n} was given.")
    if seconds is not None and not 0 <= seconds <= 86_400:
        raise InvalidInput(f"seconds must be from 0 to 86400; {seconds} was given.")


def _price(
    ctx: ToolContext,
    n: int,
    quality: str | None,
    size: str | None,
    seconds: float | None,
    backend: str | None,
) -> tuple[Estimate, str, list[str]]:
    """(estimate, what it priced, notes), planned the way a real request would be.

    A retired model is refused here as a real request would be (model catalogue).
    """
    assert ctx.services.prices is not None
    try:
        planned = image_jobs.checked(
            image_jobs.plan(ctx, "estimate", backend, quality=quality, size=size)
        )
        backend_id, model = planned.backend.id, planned.request.model
        quality, size = planned.request.quality, planned.request.size
        label = planned.label
    except ModelRetired:
        raise
    except AtelierError:
        # Pricing needs no credentials: "replicate:owner/name" is priced even when the
        # backend is not configured here; without a model there is nothing to look up.
        backend_id, _, model = (backend or "").partition(":")
        if not (backend_id.strip() and model.strip()):
            raise
        backend_id, model = backend_id.strip().lower(), model.strip()
        label = f"{backend_id} {model}"
    status = ctx.services.backends.check_model(backend_id, model, "image model")
    warning = status.warning() if status is not None else None
    estimate = ctx.services.prices.estimate(
        backend_id, model, n=n, quality=quality, size=size, seconds=seconds
    )
    return estimate, label, [warning] if warning else []


async def _budget_lines(ctx: ToolContext, usd: Decimal) -> list[str]:
    if ctx.services.ledger is None:
        return []
    lines = []
    for usage in await ctx.services.ledger.usage(
        user_id=ctx.turn.user_id,
        thread_id=ctx.turn.thread_id,
        operator_limits=ctx.services.operator_limits,
    ):
        where = "this conversation" if usage.scope == "thread" else "today (UTC)"
        used = usage.spent_usd + usage.reserved_usd
        if usage.limit_usd is None:
            lines.append(f"Spent {where}: {money.usd(used, 4)}; no budget set.")
            continue
        left = max(usage.limit_usd - used, Decimal(0))
        verdict = "fits" if usd <= left else "**does not fit**"
        lines.append(
            f"Budget for {where}: {money.usd(usage.limit_usd, 2)}, {money.usd(left, 4)} left "
            f"— this {verdict}."
        )
        if usage.confirm_above_usd is not None and usd > usage.confirm_above_usd:
            lines.append(
                f"Above the {money.usd(usage.confirm_above_usd, 2)} threshold: you would be asked "
                "to confirm first."
            )
    return list(dict.fromkeys(lines))


async def _estimate_cost(ctx: ToolContext, args: EstimateCostArgs) -> tuple[str, ToolArtifact]:
    _check(args.n, args.seconds)
    if ctx.services.prices is None:
        raise InvalidInput("Prices are not loaded in this app, so nothing can be estimated.")
    estimate, label, notes = _price(
        ctx, args.n, args.quality, args.size, args.seconds, args.backend
    )
    if estimate.unpriced:
        # What a real request would do: refused, or counted at the operator's ceiling.
        try:
            estimate = spending.for_budget(
                estimate, ctx.services.operator_limits, backend="", model=label, units=args.n
            )
        except InvalidInput:
            text = (
                f"**Cost of {args.n} × {label}: unknown.** It has no price here, and models "
                "without a price are not run on this server; the operator can price it in "
                "the file named by ATELIER_PRICES_FILE.\n\n_Nothing was made or spent._"
            )
            return text, ToolArtifact(text=text)
    text = spending.describe(estimate, f"{args.n} × {label}")
    if estimate.usd > 0 or not estimate.unpriced:
        text += "\n\n" + "\n".join(await _budget_lines(ctx, estimate.usd))
    text += "".join(f"\n\n_{note}_" for note in notes)
    text = text.strip() + "\n\n_Nothing was made or spent._"
    return text, ToolArtifact(text=text)


estimate_cost = Tool(
    name="estimate_cost",
    description=DESCRIPTION,
    args=EstimateCostArgs,
    run=_estimate_cost,
    commands=(
        Command(
            "estimate",
            "calculator",
            "Price a request first: /estimate 20 --quality high [--size ..] [--backend ..]",
            text="n",
        ),
    ),
)
