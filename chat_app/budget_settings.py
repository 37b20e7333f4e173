"""The budget fields of the settings panel: this conversation, the user's day, the ask.

They live in the ledger's budget table, not in the thread's metadata, because the daily
budget and the confirmation threshold belong to the user across conversations; every
conversation's panel shows and edits the same values.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from chainlit.input_widget import TextInput

from core import money
from core.errors import InvalidInput
from memory.ledger import Ledger, OperatorLimits

MAX_USD = Decimal("100000")
FIELDS = ("budget_thread_usd", "budget_day_usd", "confirm_above_usd")


@dataclass(frozen=True)
class BudgetValues:
    thread_usd: Decimal | None = None  # hard limit for this conversation
    day_usd: Decimal | None = None  # hard limit for the user's UTC day
    confirm_above_usd: Decimal | None = None  # ask before anything dearer


async def load(ledger: Ledger, user_id: str, thread_id: str) -> BudgetValues:
    rows = await ledger.budgets(user_id=user_id, thread_id=thread_id)
    mine = {row.scope: row for row in rows if row.set_by == "user"}
    thread, day = mine.get("thread"), mine.get("user_day")
    return BudgetValues(
        thread_usd=thread.limit_usd if thread else None,
        day_usd=day.limit_usd if day else None,
        confirm_above_usd=day.confirm_above_usd if day else None,
    )


def _text(value: Decimal | None) -> str:
    return "" if value is None else f"{value.normalize():f}"


def widgets(values: BudgetValues, operator: OperatorLimits) -> list[Any]:
    def by_operator(value: Decimal | None, what: str) -> str:
        return f" The operator's {what}: {money.usd(value, 2)}." if value is not None else ""

    return [
        TextInput(
            id="budget_thread_usd",
            label="Budget for this conversation (USD)",
            initial=_text(values.thread_usd),
            placeholder="no limit",
            description="Requests that would go over it are refused, with the numbers."
            + by_operator(operator.thread_usd, "limit"),
        ),
        TextInput(
            id="budget_day_usd",
            label="Daily budget, all your conversations (USD, UTC day)",
            initial=_text(values.day_usd),
            placeholder="no limit",
            description=by_operator(operator.user_day_usd, "limit").strip() or None,
        ),
        TextInput(
            id="confirm_above_usd",
            label="Ask before spending more than (USD)",
            initial=_text(values.confirm_above_usd),
            placeholder="default"
            + (
                f" {money.usd(operator.confirm_above_usd, 2)}"
                if operator.confirm_above_usd is not None
                else ": never ask"
            ),
            description="Anything estimated above this waits for Confirm / Cancel.",
        ),
    ]


def _dollars(raw: Any, label: str) -> Decimal | None:
    text = str(raw if raw is not None else "").strip().lstrip("$").strip()
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidInput(f"{label} must be an amount in dollars, like 5 or 0.50.") from None
    if not value.is_finite() or value < 0 or value > MAX_USD:
        raise InvalidInput(
            f"{label} must be from {money.usd(0, 0)} to "
            f"{money.usd(MAX_USD, 0, grouped=True)}; {text} was given."
        )
    if value != value.quantize(Decimal("0.000001")):
        raise InvalidInput(f"{label} takes at most six decimal places; {text} was given.")
    return value


def parse(values: dict[str, Any]) -> BudgetValues:
    return BudgetValues(
        thread_usd=_dollars(values.get("budget_thread_usd"), "Budget for this conversation"),
        day_usd=_dollars(values.get("budget_day_usd"), "Daily budget"),
        confirm_above_usd=_dollars(values.get("confirm_above_usd"), "Ask before spending"),
    )


async def save(ledger: Ledger, user_id: str, thread_id: str, values: BudgetValues) -> None:
    await ledger.set_budget("thread", thread_id, values.thread_usd, user_id=user_id)
    await ledger.set_budget(
        "user_day",
        user_id,
        values.day_usd,
        user_id=user_id,
        confirm_above_usd=values.confirm_above_usd,
    )


def describe(values: BudgetValues) -> str:
    parts = []
    if values.thread_usd is not None:
        parts.append(f"{money.usd(values.thread_usd, 2)} for this conversation")
    if values.day_usd is not None:
        parts.append(f"{money.usd(values.day_usd, 2)} a day")
    if values.confirm_above_usd is not None:
        parts.append(f"ask above {money.usd(values.confirm_above_usd, 2)}")
    return "Budgets: " + (", ".join(parts) if parts else "none of your own") + "."
