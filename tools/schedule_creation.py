"""schedule_creation: "every morning at 8, three watercolours on a rotating theme".

A schedule is a batch that starts itself (chat_app/scheduler.py): each due time makes
`count` images of the prompt in the schedule's own conversation, the theme taken in turn
from its list. Creating one shows what one run costs and the next three run times in
the schedule's time zone, and asks once: the runs then go ahead without asking, as
nobody is there to answer. The per-schedule budget is the budget of its conversation,
so the ledger stops a run that would take the schedule's spending past it.

`manage_schedules` lists, pauses, resumes, edits and deletes them; every id is the
user's own or is "not found", whoever else's it is.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from core import money
from core.errors import InvalidInput, NotFound
from memory.ids import is_uuid
from memory.models import utcnow
from tools import schedule_times, spending
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool
from tools.schedule_runs import RunPlan, local_time, next_runs, plan_run, run_prompt, when_of

if TYPE_CHECKING:
    from memory.schedules import ScheduleRecord, ScheduleStore

MAX_COUNT = 100  # images per run
MAX_THEMES = 100
THEME_MAX = 200  # characters of one theme
NAME_MAX = 120
PROMPT_MAX = 4000
SHOWN_RUNS = 3
DEFAULT_TIMEZONE = "UTC"
_MICRO = Decimal("0.000001")


class ScheduleArgs(BaseModel):
    prompt: Annotated[str, Option(words=True)] = Field(
        description="What each run makes; '{theme}' is replaced by the run's theme."
    )
    when: Annotated[str | None, Option(words=True)] = Field(
        None,
        description="Required. When it runs: 'every day at 8', 'every morning at 8', "
        "'every monday at 9:30', 'weekly mon,thu 07:15', 'every 2 hours', 'cron 0 8 * * *'.",
    )
    name: Annotated[str | None, Option(words=True)] = Field(
        None, description="A short name (default: the start of the prompt)."
    )
    timezone: Annotated[str | None, Option(flag="tz")] = Field(
        None, description="IANA time zone of the times, e.g. Europe/London (default UTC)."
    )
    themes: list[str] | None = Field(
        None, description="Themes taken in turn, one per run, e.g. ['foxes', 'owls']."
    )
    count: int = Field(1, description="Images per run (1-100).")
    style: str | None = Field(None, description="A style preset (see /styles).")
    backend: str | None = Field(
        None, description="Backend spec, e.g. 'openai' or 'replicate:owner/name'."
    )
    size: str | None = Field(None, description="WIDTHxHEIGHT, e.g. 1024x1024.")
    budget_usd: Annotated[float | None, Option(flag="budget")] = Field(
        None, description="Most this schedule may spend in all, in USD; runs stop there."
    )
    missed: Literal["run_once", "skip"] | None = Field(
        None,
        description="A run missed while the app was down: run_once (on start) or skip. "
        "Default: the server's setting.",
    )


class ManageSchedulesArgs(BaseModel):
    action: Annotated[
        Literal["list", "pause", "resume", "edit", "delete"], Option(preset_only=True)
    ] = Field(description="What to do: list the user's schedules, or act on one.")
    schedule_id: Annotated[str | None, Option(flag="id")] = Field(
        None, description="The schedule (its id, or the first 8 characters of it)."
    )
    name: Annotated[str | None, Option(words=True)] = Field(None, description="edit: new name.")
    when: Annotated[str | None, Option(words=True)] = Field(None, description="edit: new times.")
    timezone: Annotated[str | None, Option(flag="tz")] = Field(None, description="edit: zone.")
    prompt: Annotated[str | None, Option(words=True)] = Field(None, description="edit: new prompt.")
    themes: list[str] | None = Field(None, description="edit: new themes.")
    count: int | None = Field(None, description="edit: images per run.")
    style: str | None = Field(None, description="edit: style preset.")
    backend: str | None = Field(None, description="edit: backend spec.")
    size: str | None = Field(None, description="edit: size.")
    budget_usd: Annotated[float | None, Option(flag="budget")] = Field(
        None, description="edit: total budget in USD (0 removes it)."
    )
    missed: Literal["run_once", "skip"] | None = Field(None, description="edit: missed runs.")


DESCRIPTION = (
    "Create a schedule that makes images on its own at set times (daily, weekly, every N "
    "hours, or cron), with themes rotating from a list, in its own conversation. The user "
    "sees the cost of one run and the next run times, and confirms once."
)
MANAGE_DESCRIPTION = "List, pause, resume, edit or delete the user's schedules."


def _store(ctx: ToolContext) -> ScheduleStore:
    store = ctx.services.schedules
    if store is None:
        raise InvalidInput("Schedules are not available in this app.")
    return store


def _count(count: int) -> int:
    if not 1 <= count <= MAX_COUNT:
        raise InvalidInput(f"count must be from 1 to {MAX_COUNT} images per run; {count} given.")
    return count


def _themes(themes: list[str] | None) -> list[str]:
    cleaned = [t.strip() for t in themes or [] if t.strip()]
    if len(cleaned) > MAX_THEMES:
        raise InvalidInput(f"At most {MAX_THEMES} themes; {len(cleaned)} were given.")
    if any(len(t) > THEME_MAX for t in cleaned):
        raise InvalidInput(f"A theme is at most {THEME_MAX} characters.")
    return cleaned


def _prompt(prompt: str, themes: list[str]) -> str:
    prompt = prompt.strip()
    if not prompt:
        raise InvalidInput("Say what each run should make, e.g. 'a watercolour of {theme}'.")
    if len(prompt) > PROMPT_MAX:
        raise InvalidInput(f"The prompt is at most {PROMPT_MAX} characters.")
    if "{theme}" in prompt and not themes:
        raise InvalidInput(
            "The prompt has {theme} but no themes were given: add --themes foxes,owls."
        )
    return prompt


def _name(name: str | None, prompt: str) -> str:
    name = (name or "").strip() or " ".join(prompt.replace("{theme}", "").split())[:60]
    if len(name) > NAME_MAX:
        raise InvalidInput(f"A schedule's name is at most {NAME_MAX} characters.")
    return name


def _style(ctx: ToolContext, style: str | None) -> str | None:
    return None if style is None or not style.strip() else ctx.services.styles.get(style).name


def _budget(value: float | None) -> Decimal | None:
    """Dollars to the ledger's six places; 0 (or none) means no budget."""
    if value is None or value == 0:
        return None
    amount = Decimal(str(value))
    if not amount.is_finite() or amount < 0 or amount >= 1_000_000:
        raise InvalidInput("budget must be in dollars, from 0.01 to 999999.")
    return amount.quantize(_MICRO)


def _check_budget(plan: RunPlan, budget: Decimal | None) -> None:
    if budget is not None and plan.estimate.usd > budget:
        raise InvalidInput(
            f"One run is estimated at {money.usd(plan.estimate.usd, 4)}, more than the "
            f"schedule's whole budget of {money.usd(budget, 2)}: raise the budget or make "
            "fewer or cheaper images per run."
        )


def _summary(
    name: str, when: schedule_times.When, plan: RunPlan, runs: list[datetime], themes: list[str]
) -> str:
    lines = [
        f"**Schedule '{name}'**: {schedule_times.describe(when)}.",
        f"Each run: {spending.summary(plan.estimate, plan.label)}",
        "Next runs: " + "; ".join(local_time(r, when.timezone) for r in runs) + ".",
    ]
    if themes:
        lines.append("Themes in turn: " + ", ".join(themes) + ".")
    return "\n\n".join(lines)


async def resolve(store: ScheduleStore, user_id: str, given: str | None) -> ScheduleRecord:
    """The user's schedule named by id or by its first characters (as lists show it)."""
    given = (given or "").strip().strip("`")
    if not given:
        raise InvalidInput("Name the schedule by its id: `/schedule list` shows them.")
    if is_uuid(given):
        return await store.get(given, user_id)
    matches = [r for r in await store.for_user(user_id) if r.id.startswith(given.lower())]
    if len(given) < 4 or len(matches) != 1:
        if len(matches) > 1 and len(given) >= 4:
            raise InvalidInput(f"Several schedules start with {given!r}: give more of the id.")
        raise NotFound(f"No schedule with id {given[:40]} in your account.")
    return matches[0]


# --------------------------------------------------------------------------- creating


async def _create(ctx: ToolContext, args: ScheduleArgs) -> tuple[str, ToolArtifact]:
    from memory.schedules import NewSchedule

    store = _store(ctx)
    themes = _themes(args.themes)
    prompt = _prompt(args.prompt, themes)
    name = _name(args.name, prompt)
    count = _count(args.count)
    style = _style(ctx, args.style)
    budget = _budget(args.budget_usd)
    if not (args.when or "").strip():
        raise InvalidInput(
            "Say when it runs, e.g. --when every morning at 8 (or: every monday at 9:30, "
            "every 2 hours, cron 0 8 * * *)."
        )
    now = utcnow()
    when = schedule_times.parse_when(args.when, args.timezone or DEFAULT_TIMEZONE, anchor=now)
    plan = plan_run(ctx, run_prompt(prompt, themes, 0), count, args.backend, args.size)
    _check_budget(plan, budget)
    if budget is not None and ctx.services.ledger is None:
        raise InvalidInput("Budgets are not kept in this app, so a schedule cannot have one.")
    runs = next_runs(when, now)
    shown = _summary(name, when, plan, runs, themes)
    if budget is not None:
        shown += f"\n\nBudget for all its runs: {money.usd(budget, 2)}."
    question = shown + "\n\nRuns go ahead without asking again. Create this schedule?"
    if not await ctx.port.confirm(question):
        raise spending.Declined("Cancelled: no schedule was created and nothing was spent.")
    record = await store.create(
        ctx.turn.user_id,
        NewSchedule(
            name=name,
            kind=when.kind,
            expression=when.expression,
            timezone=when.timezone,
            prompt=prompt,
            themes=themes,
            count=count,
            style=style,
            backend=plan.backend,
            size=args.size,
            budget_usd=budget,
            missed_policy=args.missed,
            next_run_at=runs[0],
        ),
    )
    try:
        await _set_budget(ctx, record, budget)
    except BaseException:
        await store.delete(record.id, ctx.turn.user_id)  # no schedule without its budget
        raise
    text = (
        f"Schedule '{record.name}' created (id `{record.id[:8]}`): "
        f"{schedule_times.describe(when)}, first run {local_time(runs[0], when.timezone)}. "
        f"Its runs go to the conversation 'Schedule: {record.name}' and the gallery "
        f"(/gallery?schedule={record.id}). `/schedule list` shows your schedules."
    )
    return text, ToolArtifact(text=shown + "\n\n" + text)


async def _set_budget(ctx: ToolContext, record: ScheduleRecord, budget: Decimal | None) -> None:
    """The schedule's budget is its conversation's (None removes it)."""
    if ctx.services.ledger is None:
        if budget is not None:
            raise InvalidInput("Budgets are not kept in this app, so a schedule cannot have one.")
        return
    await ctx.services.ledger.set_budget(
        "thread", record.thread_id, budget, user_id=ctx.turn.user_id
    )


# --------------------------------------------------------------------------- managing


async def _manage(ctx: ToolContext, args: ManageSchedulesArgs) -> tuple[str, ToolArtifact]:
    store = _store(ctx)
    user_id = ctx.turn.user_id
    if args.action == "list":
        text = await _list(ctx, store)
        return text, ToolArtifact(text=text)
    record = await resolve(store, user_id, args.schedule_id)
    if args.action == "pause":
        await store.set_status(record.id, user_id, "paused")
        text = f"Schedule '{record.name}' is paused: no run starts until `/schedule resume`."
    elif args.action == "resume":
        text = await _resume(store, record, user_id)
    elif args.action == "delete":
        await store.delete(record.id, user_id)
        text = (
            f"Schedule '{record.name}' is deleted: no more runs. Its conversation and images "
            "are kept."
        )
    else:
        text = await _edit(ctx, store, record, args)
    return text, ToolArtifact(text=text)


async def _resume(store: ScheduleStore, record: ScheduleRecord, user_id: str) -> str:
    """Active again from the next due time: what fell due while paused is not run."""
    if record.status == "active":
        raise InvalidInput(f"Schedule '{record.name}' is already active.")
    next_run = schedule_times.next_after(when_of(record), utcnow())
    # One change: active with a due time in the past would fire at once as "missed".
    await store.update(record.id, user_id, status="active", next_run_at=next_run)
    return (
        f"Schedule '{record.name}' is active again; next run "
        f"{local_time(next_run, record.timezone)}."
    )


_EDITABLE = ("name", "when", "timezone", "prompt", "themes", "count", "style", "backend")
_EDITABLE += ("size", "budget_usd", "missed")


async def _edit(
    ctx: ToolContext, store: ScheduleStore, record: ScheduleRecord, args: ManageSchedulesArgs
) -> str:
    asked = {f: getattr(args, f) for f in _EDITABLE if getattr(args, f) is not None}
    if not asked:
        raise InvalidInput(
            "Say what to change, e.g. `/schedule edit ID --count 4 --when every day at 9`."
        )
    themes = _themes(args.themes) if args.themes is not None else list(record.themes)
    prompt = _prompt(args.prompt if args.prompt is not None else record.prompt, themes)
    count = _count(args.count if args.count is not None else record.count)
    changes: dict[str, Any] = {"prompt": prompt, "themes": themes, "count": count}
    if args.name is not None:
        changes["name"] = _name(args.name, prompt)
    if args.style is not None:
        changes["style"] = _style(ctx, args.style)
    if args.size is not None:
        changes["size"] = args.size
    if args.missed is not None:
        changes["missed_policy"] = args.missed
    when = when_of(record)
    if args.when is not None or args.timezone is not None:
        now = utcnow()
        when = schedule_times.parse_when(
            args.when or _phrase(when), args.timezone or record.timezone, anchor=record.created_at
        )
        changes.update(
            kind=when.kind,
            expression=when.expression,
            timezone=when.timezone,
            next_run_at=schedule_times.next_after(when, now),
        )
    budget = _budget(args.budget_usd) if args.budget_usd is not None else record.budget_usd
    changes["budget_usd"] = budget
    backend = args.backend if args.backend is not None else record.backend
    plan = plan_run(
        ctx,
        run_prompt(prompt, themes, record.theme_index),
        count,
        backend,
        changes.get("size", record.size),
    )
    changes["backend"] = plan.backend
    _check_budget(plan, budget)
    name = changes.get("name", record.name)
    first = changes.get("next_run_at", record.next_run_at)
    runs = [first, *next_runs(when, first, SHOWN_RUNS - 1)]
    question = _summary(name, when, plan, runs, themes)
    if budget is not None:
        question += f"\n\nBudget for all its runs: {money.usd(budget, 2)}."
    if not await ctx.port.confirm(question + "\n\nSave these changes?"):
        raise spending.Declined(f"Cancelled: schedule '{record.name}' was not changed.")
    updated = await store.update(record.id, ctx.turn.user_id, **changes)
    if args.budget_usd is not None:
        await _set_budget(ctx, updated, budget)
    return f"Schedule '{updated.name}' is changed.\n\n{question}"


def _phrase(when: schedule_times.When) -> str:
    """A stored schedule's times as parse_when reads them (to change only the zone)."""
    if when.kind == "daily":
        return f"daily {when.expression}"
    if when.kind == "weekly":
        return f"weekly {when.expression}"
    if when.kind == "interval":
        return f"interval {when.expression}"
    return f"cron {when.expression}"


async def _list(ctx: ToolContext, store: ScheduleStore) -> str:
    records = await store.for_user(ctx.turn.user_id)
    if not records:
        return (
            "You have no schedules. Create one: `/schedule a watercolour of {theme} --when "
            "every morning at 8 --themes foxes,owls --count 3`."
        )
    lines = [
        "| id | name | when | next run | per run | spent / budget | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        spent = await _spent(ctx, record)
        budget = "no budget" if record.budget_usd is None else money.usd(record.budget_usd, 2)
        next_run = local_time(record.next_run_at, record.timezone)
        lines.append(
            f"| `{record.id[:8]}` | {record.name} | {schedule_times.describe(when_of(record))} | "
            f"{next_run if record.status == 'active' else '–'} | {record.count} | "
            f"{money.usd(spent, 4)} / {budget} | {record.status} |"
        )
    lines.append(
        "\n`/schedule pause ID` · `/schedule resume ID` · `/schedule edit ID --count 4` · "
        "`/schedule delete ID`"
    )
    return "\n".join(lines)


async def _spent(ctx: ToolContext, record: ScheduleRecord) -> Decimal:
    if ctx.services.ledger is None:
        return Decimal(0)
    usages = await ctx.services.ledger.usage(user_id=ctx.turn.user_id, thread_id=record.thread_id)
    thread = next(u for u in usages if u.scope == "thread")
    return thread.spent_usd + thread.reserved_usd


schedule_creation = Tool(
    name="schedule_creation",
    description=DESCRIPTION,
    args=ScheduleArgs,
    run=_create,
    commands=(
        Command(
            "schedule",
            "calendar-clock",
            "Make images on a schedule: /schedule a watercolour of {theme} --when every "
            "morning at 8 --themes foxes,owls --count 3 · /schedule list · pause · resume · "
            "edit · delete",
            text="prompt",
            needs_text="Say what to make and when: /schedule a fox --when every day at 8.",
        ),
    ),
)


def _manage_command(action: str, icon: str, summary: str) -> Command:
    return Command(
        f"schedule {action}",
        icon,
        summary,
        text=None if action == "list" else "schedule_id",
        preset={"action": action},
    )


manage_schedules = Tool(
    name="manage_schedules",
    description=MANAGE_DESCRIPTION,
    args=ManageSchedulesArgs,
    run=_manage,
    commands=(
        _manage_command("list", "list", "Your schedules: /schedule list"),
        _manage_command("pause", "pause", "Pause a schedule: /schedule pause ID"),
        _manage_command("resume", "play", "Resume a schedule: /schedule resume ID"),
        _manage_command("edit", "pencil", "Change a schedule: /schedule edit ID --count 4"),
        _manage_command("delete", "trash-2", "Delete a schedule: /schedule delete ID"),
    ),
)
