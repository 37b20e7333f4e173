"""One scheduled run, shared by the schedule tools and the scheduler: its prompt, times
and plan.

Apart from tools/schedule_creation.py because the scheduler starts with the app, and
that module's tool declarations import langchain, which start-up must not load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from pipelines.catalogue.pricing import Estimate
from tools import image_jobs, schedule_times, spending
from tools.context import ToolContext

if TYPE_CHECKING:
    from memory.schedules import ScheduleRecord

SHOWN_RUNS = 3


def run_prompt(prompt: str, themes: list[str], theme_index: int) -> str:
    """The prompt of one run: its theme in place of `{theme}`, or appended."""
    if not themes:
        return prompt
    theme = themes[theme_index % len(themes)]
    if "{theme}" in prompt:
        return prompt.replace("{theme}", theme)
    return f"{prompt}, theme: {theme}"


def when_of(record: ScheduleRecord) -> schedule_times.When:
    """A stored schedule's times (intervals count from its creation)."""
    return schedule_times.When(
        record.kind, record.expression, record.timezone, anchor=record.created_at
    )


def next_runs(when: schedule_times.When, after: datetime, n: int = SHOWN_RUNS) -> list[datetime]:
    runs: list[datetime] = []
    for _ in range(n):
        after = schedule_times.next_after(when, after)
        runs.append(after)
    return runs


def local_time(moment: datetime, timezone: str) -> str:
    """`Tue 01 Dec 2026 08:00 GMT`: how a run time is shown, in the schedule's zone."""
    return moment.astimezone(ZoneInfo(timezone)).strftime("%a %d %b %Y %H:%M %Z")


@dataclass(frozen=True)
class RunPlan:
    """What one run sends, where, and what it is estimated to cost (for the budgets)."""

    backend: str  # the resolved spec, "openai:gpt-image-1.5": runs stay on it
    label: str
    estimate: Estimate


def plan_run(
    ctx: ToolContext, prompt: str, count: int, backend: str | None, size: str | None
) -> RunPlan:
    """Plan one run as the scheduler will send it (no panel: a schedule has none)."""
    planned = image_jobs.checked(
        image_jobs.plan(ctx, prompt, backend, use_panel=False, n=1, size=size)
    )
    model = planned.request.model
    priced = image_jobs.estimate(ctx, planned, n=count)
    if priced is None:
        priced = Estimate(usd=Decimal(0), lines=["prices are not loaded"], unpriced=True)
    priced = spending.for_budget(
        priced, ctx.services.operator_limits, backend=planned.backend.id, model=model, units=count
    )
    return RunPlan(
        f"{planned.backend.id}:{model}", image_jobs.describe_request(planned, count), priced
    )
