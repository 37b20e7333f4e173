"""`/cost`: what this conversation and this user have spent, by day, backend and model.

Shown as tables, a stacked bar chart of the user's daily spending (Chainlit's Plotly
element) and a CSV download, all stored with the thread so the report can be read again
after a resume. Only settled costs are counted; requests still running are shown apart.
Batches and schedules get their own lines, from the ledger entries that name a batch (a
schedule's runs are batches naming it).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

import chainlit as cl

from chat_app import rendering
from core import money
from core.errors import InvalidInput
from memory.ledger import BatchCostRow, CostRow, Ledger, OperatorLimits, ScopeUsage

DEFAULT_DAYS = 30


def parse_days(text: str) -> int:
    """`/cost`, `/cost 7` or `/cost --days 7`."""
    words = text.replace("--days", " ").split()
    if not words:
        return DEFAULT_DAYS
    if len(words) == 1 and words[0].isdigit() and 1 <= int(words[0]) <= 366:
        return int(words[0])
    raise InvalidInput("Use /cost, or /cost --days N for the last N days (1 to 366).")


def _total(rows: list[CostRow]) -> tuple[Decimal, int, int]:
    return (
        sum((r.usd for r in rows), Decimal(0)),
        sum(r.count for r in rows),
        sum(r.unpriced for r in rows),
    )


def _by_model(rows: list[CostRow]) -> str:
    grouped: dict[tuple[str, str], list[CostRow]] = defaultdict(list)
    for row in rows:
        grouped[(row.backend, row.model)].append(row)
    lines = ["| backend | model | actions | spent |", "|---|---|---|---|"]
    for (backend, model), group in sorted(grouped.items(), key=lambda kv: -_total(kv[1])[0]):
        usd, count, unpriced = _total(group)
        unknown = f" (+{unpriced} unpriced)" if unpriced else ""
        ceiling = sum(r.at_ceiling for r in group)
        if ceiling:
            unknown += f" ({ceiling} unpriced, at the ceiling)"
        lines.append(f"| {backend} | `{model}` | {count} | {money.usd(usd, 4)}{unknown} |")
    return "\n".join(lines)


def _by_day(rows: list[CostRow]) -> str:
    grouped: dict[date, list[CostRow]] = defaultdict(list)
    for row in rows:
        grouped[row.day].append(row)
    lines = ["| day (UTC) | actions | spent |", "|---|---|---|"]
    for day in sorted(grouped, reverse=True):
        usd, count, _ = _total(grouped[day])
        lines.append(f"| {day.isoformat()} | {count} | {money.usd(usd, 4)} |")
    return "\n".join(lines)


def _section(title: str, rows: list[CostRow], with_days: bool) -> str:
    if not rows:
        return f"**{title}:** nothing spent."
    usd, count, unpriced = _total(rows)
    head = f"**{title}: {money.usd(usd, 4)}** over {count} paid action{'s' if count != 1 else ''}"
    if unpriced:
        head += f"; {unpriced} with no known price are not in that sum"
    ceiling = sum(r.at_ceiling for r in rows)
    if ceiling:
        head += (
            f"; {ceiling} with no known price are counted at the operator's ceiling for "
            "unpriced models"
        )
    parts = [head + ".", _by_model(rows)]
    if with_days:
        parts.append(_by_day(rows))
    return "\n\n".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _batches(rows: list[BatchCostRow]) -> str:
    """One line per batch the user started (not a schedule's run), costliest first."""
    if not rows:
        return "**Batches:** nothing spent."
    usd = sum((r.usd for r in rows), Decimal(0))
    batches = f"{len(rows)} batch" + ("es" if len(rows) != 1 else "")
    lines = [
        f"**Batches: {money.usd(usd, 4)}** over {batches}.",
        "| batch | id | paid actions | spent |",
        "|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: -r.usd):
        title = _cell(row.title or "(conversation deleted)")
        lines.append(f"| {title} | `{row.batch_id[:8]}` | {row.count} | {money.usd(row.usd, 4)} |")
    return "\n".join(lines)


def _schedules(rows: list[BatchCostRow]) -> str:
    """One line per schedule: its runs (batches) in the period, added up."""
    if not rows:
        return "**Schedules:** nothing spent."
    grouped: dict[str, list[BatchCostRow]] = defaultdict(list)
    for row in rows:
        grouped[row.schedule_id or ""].append(row)
    usd = sum((r.usd for r in rows), Decimal(0))
    lines = [
        f"**Schedules: {money.usd(usd, 4)}** over {_plural(len(grouped), 'schedule')}.",
        "| schedule | id | runs | paid actions | spent |",
        "|---|---|---|---|---|",
    ]
    totals = sorted(grouped.items(), key=lambda kv: -sum((r.usd for r in kv[1]), Decimal(0)))
    for schedule_id, group in totals:
        name = group[0].schedule_name or "(deleted schedule)"
        spent = sum((r.usd for r in group), Decimal(0))
        count = sum(r.count for r in group)
        lines.append(
            f"| {_cell(name)} | `{schedule_id[:8]}` | {len(group)} | {count} | "
            f"{money.usd(spent, 4)} |"
        )
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A name inside a Markdown table: no pipe or line break can break the row."""
    return " ".join(text.replace("|", "/").split()) or "–"


def _usage_line(usage: ScopeUsage) -> str:
    where = "This conversation" if usage.scope == "thread" else "Today (UTC)"
    text = f"{where}: spent {money.usd(usage.spent_usd, 4)}"
    if usage.reserved_usd:
        text += f", {money.usd(usage.reserved_usd, 4)} held for requests still running"
    if usage.limit_usd is not None:
        left = max(usage.limit_usd - usage.spent_usd - usage.reserved_usd, Decimal(0))
        text += (
            f"; budget {money.usd(usage.limit_usd, 2)} (set by {usage.limit_set_by}), "
            f"{money.usd(left, 4)} left"
        )
    if usage.confirm_above_usd is not None:
        text += f"; asks above {money.usd(usage.confirm_above_usd, 2)}"
    return "- " + text + "."


def chart(rows: list[CostRow], days: int) -> Any:
    """A stacked bar per UTC day, one colour per backend and model."""
    from plotly import graph_objects as go  # imported here: only /cost needs it

    figure = go.Figure()
    series: dict[str, dict[date, float]] = defaultdict(dict)
    for row in rows:
        series[f"{row.backend} {row.model}"][row.day] = float(row.usd)
    all_days = sorted({row.day for row in rows})
    for name, values in sorted(series.items()):
        figure.add_bar(
            name=name,
            x=[d.isoformat() for d in all_days],
            y=[values.get(d, 0.0) for d in all_days],
        )
    figure.update_layout(
        barmode="stack",
        title=f"Your spending, last {days} days (USD)",
        yaxis_title="USD",
        xaxis_title="UTC day",
        legend_title="backend, model",
    )
    figure.update_xaxes(type="category")  # days, not a time axis with hours on it
    return figure


async def show(
    ledger: Ledger,
    *,
    user_id: str,
    thread_id: str,
    operator_limits: OperatorLimits,
    days: int = DEFAULT_DAYS,
) -> None:
    conversation = await ledger.report(user_id, thread_id, days)
    everything = await ledger.report(user_id, days=days)
    usages = await ledger.usage(
        user_id=user_id, thread_id=thread_id, operator_limits=operator_limits
    )
    batch_rows = await ledger.batch_costs(user_id, days)
    text = "\n\n".join(
        [
            f"## Cost report (last {days} days)",
            "\n".join(_usage_line(usage) for usage in usages),
            _section("This conversation", conversation, with_days=False),
            _section("All your conversations", everything, with_days=True),
            _batches([r for r in batch_rows if r.schedule_id is None]),
            _schedules([r for r in batch_rows if r.schedule_id is not None]),
            "_Budgets are in the settings panel; `/estimate` prices a request first._",
        ]
    )
    message = cl.Message(content=text, author="Atelier")
    await message.send()
    if not everything:
        return
    csv_text = await ledger.csv(user_id, days=days)
    elements: list[cl.Element] = [
        cl.Plotly(name="spending-chart", figure=chart(everything, days), display="inline"),
        cl.File(
            name=f"atelier-costs-{days}d.csv",
            content=csv_text.encode(),
            mime="text/csv",
            display="inline",
        ),
    ]
    await rendering.send_in_order(message, elements)
