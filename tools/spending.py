"""The one path every paid action takes: say the price, ask if it is high, hold it, settle.

People get surprised by bills, so before anything that costs money runs the chat shows
the estimate; above the user's (or operator's) threshold it asks Confirm / Cancel; the
estimate is then reserved in the ledger, which refuses it past a hard limit. Afterwards
the reservation is settled with what the provider reported, or released if the action
failed, was stopped or was declined, so nothing is spent for work that was not kept.

A batch (a curation's candidates) opens one paid action for the whole batch and records
each part's cost on the same charge: one question, one reservation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from memory.errors import AtelierError
from memory.logging_setup import get_logger
from pipelines.pricing import Cost, Estimate

if TYPE_CHECKING:
    from memory.ledger import Ledger, Reservation
    from tools.context import ToolContext

log = get_logger(__name__)

_SOURCE_ORDER = ("reported", "table", "estimate")


class Declined(AtelierError):
    """The user cancelled at the confirmation (or did not answer): nothing ran or was spent."""


@dataclass
class Charge:
    """The money side of one paid action while it runs."""

    estimate: Estimate
    reservation: Reservation | None = None
    costs: list[Cost] = field(default_factory=list)
    image_id: str | None = None  # the first thing it made, for the ledger's link

    def record(self, cost: Cost, image_id: str | None = None) -> None:
        """Add what one part of the action cost (a batch records each part)."""
        self.costs.append(cost)
        if self.image_id is None:
            self.image_id = image_id

    async def settle(self, cost: Cost, image_id: str | None = None) -> None:
        """Record the action's actual cost; the ledger is written when the action ends."""
        self.record(cost, image_id)

    def actual(self) -> tuple[Decimal | None, str]:
        """(dollars, source); dollars None when some part has no known price.

        Nothing recorded (the body made nothing chargeable) falls back to the estimate,
        marked as such, because the provider may still have billed for the attempt.
        """
        if not self.costs:
            return (None if self.estimate.unpriced else self.estimate.usd), "estimate"
        if any(cost.unpriced for cost in self.costs):
            return None, "estimate"
        total = sum((cost.usd for cost in self.costs), Decimal(0))
        source = max((cost.source for cost in self.costs), key=_SOURCE_ORDER.index)
        return total, source


def describe(estimate: Estimate, label: str) -> str:
    """The estimate as the chat shows it: the total, then how it was reached."""
    if estimate.unpriced:
        why = "; ".join(estimate.lines) or "this model is not in the price table"
        return (
            f"**Cost of {label}: unknown** ({why}). It will run and be recorded as "
            "unpriced; budgets cannot count it."
        )
    head = f"**Estimated cost of {label}: ${estimate.usd:.4f}**"
    return head + "".join(f"\n- {line}" for line in estimate.lines)


def is_paid(estimate: Estimate) -> bool:
    return estimate.unpriced or estimate.usd > 0


@asynccontextmanager
async def paid_action(
    ctx: ToolContext,
    *,
    backend: str,
    model: str,
    what: str,
    estimate: Estimate,
    label: str | None = None,
) -> AsyncIterator[Charge]:
    """Show, confirm, reserve; then settle with the recorded cost or release on failure.

    Raises Declined when the user cancels and memory.ledger.BudgetExceeded past a hard
    limit, in both cases before the body runs.
    """
    charge = Charge(estimate=estimate)
    label = label or f"this {what}"
    if is_paid(estimate) and ctx.announce is not None:
        await ctx.announce(describe(estimate, label))
    ledger = ctx.ledger
    if ledger is not None and not estimate.unpriced:
        await _confirm_if_above_threshold(ctx, ledger, estimate, label, what)
    if ledger is not None:
        charge.reservation = await ledger.reserve(
            user_id=ctx.user_id,
            thread_id=ctx.thread_id,
            backend=backend,
            model=model,
            what=what,
            estimate_usd=Decimal(0) if estimate.unpriced else estimate.usd,
            operator_limits=ctx.operator_limits,
            message_id=ctx.message_id,
        )
    try:
        yield charge
    except BaseException:
        # Failed or stopped. Parts already made (a batch's first images) were paid for
        # and are kept, so they are settled; otherwise the reservation is given back. A
        # stop arrives as CancelledError; this still runs, as a task is cancelled once.
        if ledger is not None and charge.reservation is not None:
            if charge.costs:
                await _settle(ctx, charge)
            else:
                await ledger.release(charge.reservation.id, user_id=ctx.user_id)
        raise
    if ledger is not None and charge.reservation is not None:
        await _settle(ctx, charge)


async def _confirm_if_above_threshold(
    ctx: ToolContext, ledger: Ledger, estimate: Estimate, label: str, what: str
) -> None:
    needed = await ledger.needs_confirmation(
        user_id=ctx.user_id,
        thread_id=ctx.thread_id,
        estimate_usd=estimate.usd,
        operator_limits=ctx.operator_limits,
    )
    if not needed:
        return
    question = (
        f"{label[:1].upper()}{label[1:]} is estimated at ${estimate.usd:.4f}, above your "
        "confirmation threshold. Go ahead?"
    )
    # Without a way to ask (a caller with no chat), above the threshold means no.
    confirmed = await ctx.confirm(question) if ctx.confirm is not None else False
    if not confirmed:
        log.info("paid_action_declined", what=what, estimate_usd=str(estimate.usd))
        raise Declined(
            f"Cancelled: {label} (estimated ${estimate.usd:.4f}) did not run and nothing was spent."
        )


async def _settle(ctx: ToolContext, charge: Charge) -> None:
    assert ctx.ledger is not None and charge.reservation is not None
    usd, source = charge.actual()
    await ctx.ledger.settle(
        charge.reservation.id,
        user_id=ctx.user_id,
        actual_usd=usd,
        source=source if usd is not None else "unknown",
        image_id=charge.image_id,
    )
