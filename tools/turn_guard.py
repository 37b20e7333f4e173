"""What one user message may do: how many tool calls it makes, and what it spends unasked.

A confirmation threshold checked per call does not hold against a model (confused or
hostile) that answers one message with forty small calls: each is under the threshold,
together they are not. So one `TurnGuard` lives for one incoming message and every paid
action of that message goes through it (tools/spending.py):

- The message may spend up to the threshold without a question. The first paid action
  that would take the message's running total above it asks once, naming the total.
- Confirming lets the message spend one more threshold's worth before the next question
  (so a long, wanted batch asks now and then, not at every call). A single action above
  the threshold still asks on its own, as it always did.
- Cancelling ends spending for the message: every later paid action in it is refused
  without asking again (a model cannot wear the user down with repeated questions).
- Only so many tool calls run per message (`ATELIER_MAX_TOOL_CALLS_PER_TURN`); the rest
  are answered with an error the model can read, and the user is told once.

Tool calls of one message may run concurrently, so the decision and the reservation are
made under the guard's lock: two calls cannot both slip under the threshold.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal

DEFAULT_MAX_TOOL_CALLS = 12


@dataclass
class TurnGuard:
    max_tool_calls: int = DEFAULT_MAX_TOOL_CALLS
    tool_calls: int = 0  # admitted or refused, each counts
    committed_usd: Decimal = Decimal(0)  # reserved or spent by this message's paid actions
    allowance_usd: Decimal | None = None  # what the user agreed this message may reach
    declined: bool = False  # the user said Cancel once in this message
    cap_told: bool = False  # the user was told the call limit was reached
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def admit_tool_call(self) -> bool:
        """Count one tool call; False once the message has used up its calls.

        No await between the check and the count, so concurrent callers cannot overrun.
        """
        self.tool_calls += 1
        return self.tool_calls <= self.max_tool_calls

    @property
    def capped(self) -> bool:
        return self.tool_calls > self.max_tool_calls

    def cap_message(self) -> str:
        return (
            f"This message reached its limit of {self.max_tool_calls} tool calls "
            "(ATELIER_MAX_TOOL_CALLS_PER_TURN), so the rest were not run and nothing more "
            "was spent. Everything made so far is saved above; send a new message to go on."
        )

    def refusal_for_model(self) -> str:
        return (
            f"Error: refused, not run. This user message has used its limit of "
            f"{self.max_tool_calls} tool calls. Do not call any more tools: tell the user "
            "what was done and that they can send a new message to continue."
        )

    def needs_question(self, estimate_usd: Decimal, threshold: Decimal | None) -> bool:
        """Whether this action, added to the message's total, must be confirmed first."""
        if threshold is None:
            return False
        allowance = self.allowance_usd if self.allowance_usd is not None else threshold
        return estimate_usd > threshold or self.committed_usd + estimate_usd > allowance

    def confirmed(self, estimate_usd: Decimal, threshold: Decimal) -> None:
        """The user agreed: the message may reach this total plus one more threshold."""
        self.allowance_usd = self.committed_usd + estimate_usd + threshold
