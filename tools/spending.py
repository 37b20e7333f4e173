"""The one path every paid action takes: say the price, ask if it is high, hold it, settle.

People get surprised by bills, so before anything that costs money runs the chat shows
the estimate; above the user's (or operator's) threshold it asks Confirm / Cancel; the
estimate is then reserved in the ledger, which refuses it past a hard limit. Afterwards
the reservation is settled with what the provider reported, or released if the action
failed, was stopped or was declined, so nothing is spent for work that was not kept.

A batch (a curation's candidates) opens one paid action for the whole batch and records
each part's cost on the same charge: one question, one reservation.

The threshold applies to what one user message spends in total, not to each call alone
(tools/turn_guard.py): the decision and the reservation are made under the message's
lock, so its concurrent tool calls cannot each slip under it.

A model with no price in the table never runs at $0 against a budget. The operator
chooses (`ATELIER_UNPRICED_POLICY`): `refuse` it before anything runs, or `reserve` a
ceiling per output (`ATELIER_UNPRICED_RESERVE_USD`) that is confirmed, budgeted and
finally recorded like any price, with the source "ceiling" (a part the provider did
price, through reported usage, is recorded at that figure instead).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING

from core import money
from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory.ledger import OperatorLimits
from pipelines.catalogue.pricing import Cost, Estimate
from tools.turn_guard import TurnGuard

if TYPE_CHECKING:
    from memory.ledger import Ledger, Reservation
    from tools.context import ToolContext

log = get_logger(__name__)

_SOURCE_ORDER = ("reported", "table", "estimate", "ceiling")


class Declined(AtelierError):
    """The user cancelled at the confirmation (or did not answer): nothing ran or was spent."""


@dataclass
class Charge:
    """The money side of one paid action while it runs.

    `unpriced_each` is the operator's ceiling per output when the model has no price:
    a part recorded without a price is charged that, never $0.
    """

    estimate: Estimate
    reservation: Reservation | None = None
    costs: list[Cost] = field(default_factory=list)
    image_id: str | None = None  # the first thing it made, for the ledger's link
    unpriced_each: Decimal | None = None
    sources: list[str] = field(default_factory=list)  # per recorded part
    # What the ledger settled when the action ended (None: not settled, or no price).
    settled_usd: Decimal | None = None

    def record(self, cost: Cost, image_id: str | None = None, units: int = 1) -> None:
        """Add what one part of the action cost (a batch records each part).

        `units` is how many outputs the part made: an unpriced part is charged the
        ceiling for each.
        """
        source: str = cost.source
        if cost.unpriced and self.unpriced_each is not None:
            ceiling = self.unpriced_each * max(1, units)
            cost = replace(
                cost,
                usd=ceiling,
                lines=[
                    *cost.lines,
                    f"charged the operator's ceiling for unpriced models: "
                    f"{max(1, units)} × {money.usd(self.unpriced_each)} = {money.usd(ceiling)}",
                ],
            )
            source = "ceiling"
        self.costs.append(cost)
        self.sources.append(source)
        if self.image_id is None:
            self.image_id = image_id

    async def settle(self, cost: Cost, image_id: str | None = None, units: int = 1) -> None:
        """Record the action's actual cost; the ledger is written when the action ends."""
        self.record(cost, image_id, units)

    def actual(self) -> tuple[Decimal | None, str]:
        """(dollars, source); dollars None only for a part with no price and no ceiling.

        Nothing recorded (the body made nothing chargeable) falls back to the estimate,
        marked as such, because the provider may still have billed for the attempt; an
        unpriced estimate is then the whole ceiling that was reserved.
        """
        if not self.costs:
            if self.estimate.unpriced:
                if self.unpriced_each is None:
                    return None, "estimate"
                return self.estimate.usd, "ceiling"
            return self.estimate.usd, "estimate"
        if any(cost.unpriced for cost in self.costs) and self.unpriced_each is None:
            return None, "estimate"
        total = sum((cost.usd for cost in self.costs), Decimal(0))
        source = max(self.sources, key=_SOURCE_ORDER.index)
        return total, source


def amount(estimate: Estimate) -> str:
    """The estimate's figure: "$0.2110", or "$0.006–$0.211" when the provider picks
    the tier (quality auto) and the price is a range."""
    if estimate.low_usd is not None and estimate.low_usd != estimate.usd:
        return f"{money.usd(estimate.low_usd)}–{money.usd(estimate.usd)}"
    return money.usd(estimate.usd, 4)


def describe(estimate: Estimate, label: str) -> str:
    """The estimate as `/estimate` shows it: the total, then how it was reached."""
    if estimate.unpriced:
        return _unknown(estimate, label)
    head = f"**Estimated cost of {label}: {amount(estimate)}**"
    # One bullet per line: a line that begins with a list marker would nest a second.
    return head + "".join(f"\n- {line.lstrip('-+*• ')}" for line in estimate.lines)


def summary(estimate: Estimate, label: str) -> str:
    """The one quiet line shown before a paid action runs (its arithmetic is for
    `/estimate`; the confirmation question, when one is due, is the prominent part)."""
    if estimate.unpriced:
        return _unknown(estimate, label)
    notes = []
    if estimate.low_usd is not None and estimate.low_usd != estimate.usd:
        notes.append("the provider picks the quality tier")
    notes += [f"plus {what}, billed after the run" for what in estimate.untold]
    why = f" ({'; '.join(notes)})" if notes else ""
    return f"Estimated cost of {label}: {amount(estimate)}{why}."


def _unknown(estimate: Estimate, label: str) -> str:
    why = "; ".join(estimate.lines) or "this model is not in the price table"
    if estimate.usd > 0:
        return (
            f"**Cost of {label}: unknown, up to {money.usd(estimate.usd, 4)} reserved** "
            f"({why}). "
            "It counts against your budgets at that amount and is recorded as spent."
        )
    return (
        f"**Cost of {label}: unknown** ({why}). It will run and be recorded as "
        "unpriced; budgets cannot count it."
    )


def for_budget(
    estimate: Estimate, limits: OperatorLimits | None, *, backend: str, model: str, units: int
) -> Estimate:
    """The estimate a budget counts: an unpriced one becomes the operator's ceiling.

    Raises InvalidInput when the operator refuses unpriced models, naming the model and
    how the operator can price it.
    """
    if not estimate.unpriced or estimate.usd > 0:
        return estimate  # priced, or already at the ceiling
    limits = limits or OperatorLimits()
    if limits.unpriced_policy == "refuse":
        raise InvalidInput(
            f"{backend}:{model} has no price in this server's price table, and models "
            "without a price are not run here (ATELIER_UNPRICED_POLICY=refuse). Nothing "
            "ran and nothing was spent. Choose a priced model, or ask the operator to add "
            "a [[price]] row for it to the price file named by ATELIER_PRICES_FILE."
        )
    count = max(1, units)
    each = limits.unpriced_reserve_usd
    ceiling = (each * count).quantize(Decimal("0.000001"))
    line = (
        "reserved at the operator's ceiling for unpriced models: "
        f"{count} × {money.usd(each)} = {money.usd(ceiling)}"
    )
    return replace(estimate, usd=ceiling, lines=[*estimate.lines, line])


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
    units: int = 1,
) -> AsyncIterator[Charge]:
    """Show, confirm, reserve; then settle with the recorded cost or release on failure.

    `units` is how many outputs (or calls) the action makes: an unpriced model is
    reserved at the operator's ceiling for each. Raises InvalidInput for an unpriced
    model the operator refuses, Declined when the user cancels (now or earlier in the
    same message) and memory.ledger.BudgetExceeded past a hard limit, all before the
    body runs.
    """
    estimate = for_budget(
        estimate, ctx.services.operator_limits, backend=backend, model=model, units=units
    )
    charge = Charge(estimate=estimate)
    if estimate.unpriced:
        charge.unpriced_each = (
            ctx.services.operator_limits or OperatorLimits()
        ).unpriced_reserve_usd
    label = label or f"this {what}"
    turn = ctx.turn.guard if ctx.turn.guard is not None else TurnGuard()
    _refuse_if_declined(turn, label)
    if is_paid(estimate):
        await ctx.port.announce(summary(estimate, label))
    ledger = ctx.services.ledger
    if ledger is not None:
        # One decision at a time per message: its total and its reservations move together.
        async with turn.lock:
            _refuse_if_declined(turn, label)  # a call that waited here while the user said no
            if ctx.turn.batch_id is None:  # a batch's items were confirmed as one batch
                await _confirm_if_above_threshold(ctx, ledger, turn, estimate, label, what)
            charge.reservation = await ledger.reserve(
                user_id=ctx.turn.user_id,
                thread_id=ctx.turn.thread_id,
                backend=backend,
                model=model,
                what=what,
                estimate_usd=estimate.usd,
                operator_limits=ctx.services.operator_limits,
                message_id=ctx.turn.message_id,
                batch_id=ctx.turn.batch_id,
            )
            turn.committed_usd += estimate.usd
    try:
        yield charge
    except BaseException:
        # Failed or stopped. Parts already made (a batch's first images) were paid for
        # and are kept, so they are settled; otherwise the reservation is given back. A
        # stop arrives as CancelledError; this still runs, as a task is cancelled once.
        if ledger is not None and charge.reservation is not None:
            if charge.costs:
                await _settle(ctx, charge, turn)
            else:
                await ledger.release(charge.reservation.id, user_id=ctx.turn.user_id)
                turn.committed_usd -= estimate.usd
        raise
    if ledger is not None and charge.reservation is not None:
        await _settle(ctx, charge, turn)


def _refuse_if_declined(turn: TurnGuard, label: str) -> None:
    if turn.declined:
        raise Declined(
            f"Cancelled: you declined further spending for this message, so {label} did "
            "not run and nothing was spent. Send a new message to ask again."
        )


async def _confirm_if_above_threshold(
    ctx: ToolContext,
    ledger: Ledger,
    turn: TurnGuard,
    estimate: Estimate,
    label: str,
    what: str,
) -> None:
    """Ask when this action alone, or the message's total with it, passes the threshold."""
    threshold = await ledger.confirmation_threshold(
        user_id=ctx.turn.user_id,
        thread_id=ctx.turn.thread_id,
        operator_limits=ctx.services.operator_limits,
    )
    if threshold is None or not turn.needs_question(estimate.usd, threshold):
        return
    head = f"{label[:1].upper()}{label[1:]}"
    priced = f"**{head} is estimated at {amount(estimate)}**"
    if estimate.low_usd is not None and estimate.low_usd != estimate.usd:
        priced += f" (the provider picks the tier; up to {money.usd(estimate.usd, 4)} is held)"
    if turn.committed_usd > 0:
        total = turn.committed_usd + estimate.usd
        question = (
            f"{priced}. With what this message has already spent or reserved "
            f"({money.usd(turn.committed_usd, 4)}) it comes to {money.usd(total, 4)}, "
            f"above your confirmation threshold of {money.usd(threshold, 2)}. Go ahead?"
        )
    else:
        question = f"{priced}, above your confirmation threshold. Go ahead?"
    # Without a way to ask (a caller with no chat), above the threshold means no.
    confirmed = await ctx.port.confirm(question)
    if not confirmed:
        turn.declined = True
        log.info("paid_action_declined", what=what, estimate_usd=str(estimate.usd))
        raise Declined(
            f"Cancelled: {label} (estimated {money.usd(estimate.usd, 4)}) did not run and "
            "nothing was spent."
        )
    turn.confirmed(estimate.usd, threshold)


async def _settle(ctx: ToolContext, charge: Charge, turn: TurnGuard) -> None:
    assert ctx.services.ledger is not None and charge.reservation is not None
    usd, source = charge.actual()
    charge.settled_usd = usd
    if usd is not None:
        turn.committed_usd += usd - charge.estimate.usd
    await ctx.services.ledger.settle(
        charge.reservation.id,
        user_id=ctx.turn.user_id,
        actual_usd=usd,
        source=source if usd is not None else "unknown",
        image_id=charge.image_id,
    )
