"""start_batch: "a crayon drawing of each of these", for a list of up to a thousand objects.

The list is typed (one per line, or comma-separated on one line), given by the agent, or
attached as a .txt/.csv whose rows may name their own style, size, count, seed and
object template. Every row is checked, its prompt built (the object template, chosen
from the label unless named, wrapped in the style) and the whole batch priced BEFORE
anything is stored or reserved: a bad row, an unknown style or a list that is too long
is refused with nothing held. The user sees one estimate (with the worst case if every
item's quality checks fail and it is retried) and confirms once, always: a batch runs
on its own for a long time. Then the batch is stored and the runner
(tools/batch_runner.py) starts it in the background; the chat shows its progress.

`manage_batches` is `/batch status|pause|resume|stop ID`: every id is the user's own or
"not found", whoever else's it is.

Length: reading the list, building each item's prompt, pricing and the one question
are the steps of one request; the two tools are declared together, like train_lora's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

from core import money
from core.errors import InvalidInput, NotFound
from memory.ids import is_uuid
from pipelines.catalogue.pricing import Estimate
from tools import batch_items, image_jobs, spending
from tools.batch_items import ItemSpec
from tools.batch_setup import SHORT_ID, BatchSetup, links
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool

if TYPE_CHECKING:
    from memory.batches import BatchRecord, BatchStore, NewBatchItem
    from tools.batch_runner import BatchRunner

TITLE_MAX = 200
TITLE_LABELS = 3  # labels named in a batch's title
MAX_LISTED = 10  # batches `/batch status` lists


class StartBatchArgs(BaseModel):
    text: Annotated[str | None, Option(words=True)] = Field(
        None,
        description="The list as the user typed it: one object per line, or "
        "comma-separated on one line. Omit when the user attached a .txt/.csv list.",
    )
    items: list[str] | None = Field(
        None, description="The objects, one per entry (instead of text)."
    )
    style: str | None = Field(None, description="A style preset for every item (see /styles).")
    template: str | None = Field(
        None,
        description="An object template for every item (animal, vehicle, food, ...); "
        "default: chosen from each item.",
    )
    size: str | None = Field(None, description="WIDTHxHEIGHT for every item, e.g. 1024x1024.")
    count: int | None = Field(None, description="Images per item (default 1).")
    backend: str | None = Field(
        None, description="Backend spec, e.g. 'openai' or 'replicate:owner/name'."
    )
    model: str | None = Field(None, description="The backend's model (default: its own).")
    seed: int | None = Field(None, description="One seed for every item's first attempt.")


class ManageBatchesArgs(BaseModel):
    action: Annotated[Literal["status", "pause", "resume", "stop"], Option(preset_only=True)] = (
        Field(description="status (of one batch, or list the user's), pause, resume or stop.")
    )
    batch_id: Annotated[str | None, Option(flag="id")] = Field(
        None, description="The batch (its id, or its first 8 characters)."
    )


DESCRIPTION = (
    "Make one image per object of a list ('a crayon drawing of each of these: ...', or an "
    "attached .txt/.csv list), as a background batch: each item gets an object template "
    "and the style, is checked with the style's quality checks and retried if it fails. "
    "The user sees one estimate and confirms once; progress shows in the chat."
)
MANAGE_DESCRIPTION = "Show the status of, pause, resume or stop the user's batches."


# --------------------------------------------------------------------------- shared


def runner_of(ctx: ToolContext) -> BatchRunner:
    if ctx.services.batches is None:
        raise InvalidInput("Batches are not available in this app.")
    return ctx.services.batches


def setup_of(ctx: ToolContext) -> BatchSetup:
    return ctx.services.batch_setup or BatchSetup()


async def resolve(store: BatchStore, user_id: str, given: str | None) -> BatchRecord:
    """The user's batch named by its id or its first characters (as the chat shows it)."""
    given = (given or "").strip().strip("`")
    if not given:
        raise InvalidInput("Name the batch by its id: `/batch status` lists yours.")
    if is_uuid(given):
        return await store.get(given, user_id)
    matches = [
        b for b in await store.for_user(user_id, limit=200) if b.id.startswith(given.lower())
    ]
    if len(given) < 4 or len(matches) != 1:
        if len(matches) > 1 and len(given) >= 4:
            raise InvalidInput(f"Several batches start with {given!r}: give more of the id.")
        raise NotFound(f"No batch with id {given[:40]} in your account.")
    return matches[0]


# --------------------------------------------------------------------------- the items


def read_items(ctx: ToolContext, args: StartBatchArgs, max_items: int) -> list[ItemSpec]:
    """The list: the typed text, the agent's items and the files attached to this
    message (a typed list's lines below `/batch` arrive as one), in that order."""
    specs: list[ItemSpec] = []
    if args.text and args.text.strip():
        specs += batch_items.parse_list(args.text, max_items=max_items)
    if args.items:
        specs += batch_items.parse_list("\n".join(args.items), max_items=max_items)
    for name, data in ctx.turn.attached_files:
        specs += batch_items.parse_file(name, data, max_items=max_items)
    if not specs:
        raise InvalidInput(
            "Give the objects: `/batch apple, banana, cherry --style crayon` (or one per "
            "line below `/batch`), or attach a .txt/.csv list to a `/batch` message."
        )
    if len(specs) > max_items:
        raise InvalidInput(
            f"That is {len(specs):,} items; a batch takes at most {max_items:,}. Split the "
            "list into several batches."
        )
    return specs


def build_items(
    ctx: ToolContext, args: StartBatchArgs, specs: list[ItemSpec]
) -> list[NewBatchItem]:
    """Each row's prompt (template, then style) with its own options over the batch's."""
    from memory.batches import NewBatchItem

    templates = setup_of(ctx).templates
    styles = ctx.services.styles
    default_style = _style_name(ctx, args.style, "--style")
    default_template = templates.get(args.template) if args.template else None
    built = []
    for number, spec in enumerate(specs, start=1):
        where = f"Item {number} ({spec.label[:40]!r})"
        style = _style_name(ctx, spec.style, where) if spec.style else default_style
        if spec.template:
            try:
                template = templates.get(spec.template)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {exc.message}") from None
        else:
            template = default_template or templates.choose(spec.label)
        prompt = template.apply(spec.label)
        if style is not None:
            prompt = styles.get(style).apply(prompt)
        count = spec.count if spec.count != 1 else (args.count or 1)
        if not 1 <= count <= batch_items.MAX_COUNT:
            raise InvalidInput(f"count must be 1 to {batch_items.MAX_COUNT} images per item.")
        built.append(
            NewBatchItem(
                label=spec.label,
                prompt_sent=prompt,
                template=template.name,
                style=style,
                size=spec.size or args.size,
                count=count,
                seed=spec.seed if spec.seed is not None else args.seed,
            )
        )
    return built


def _style_name(ctx: ToolContext, name: str | None, where: str) -> str | None:
    if name is None or not name.strip():
        return None
    try:
        return ctx.services.styles.get(name).name
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc.message}") from None


# --------------------------------------------------------------------------- the price


@dataclass(frozen=True)
class Priced:
    backend: str  # the resolved spec every item is sent to, "openai:gpt-image-2"
    label: str  # "120 images with OpenAI gpt-image-2"
    quality: str | None
    size: str | None  # the batch's size (an item's own wins)
    estimate: Estimate  # every item once
    images: int


def price(ctx: ToolContext, args: StartBatchArgs, items: Sequence[NewBatchItem]) -> Priced:
    """Plan every distinct (size, count) as the runner will send it (which also refuses
    a size the model cannot make) and add up the table's price."""
    spec = _backend_spec(args)
    first = image_jobs.plan(ctx, items[0].prompt_sent, spec, size=args.size)
    backend = f"{first.backend.id}:{first.request.model}"
    size = first.request.size or None  # asked, or the conversation's panel
    quality = first.request.quality
    groups: dict[tuple[str | None, int], int] = {}
    for item in items:
        key = (item.size or size, item.count)
        groups[key] = groups.get(key, 0) + 1
    total, lines, unpriced, untold = Decimal(0), [], False, ()
    low: Decimal | None = Decimal(0)
    for (item_size, count), n in groups.items():
        try:
            planned = image_jobs.checked(
                image_jobs.plan(
                    ctx,
                    items[0].prompt_sent,
                    backend,
                    use_panel=False,
                    n=count,
                    size=item_size,
                    quality=quality,
                )
            )
        except InvalidInput as exc:
            first_row = next(
                i for i, item in enumerate(items, 1) if (item.size or size) == item_size
            )
            raise InvalidInput(
                f"{n} item(s) from item {first_row} on ask for {item_size or 'the default size'}"
                f" and {count} image(s) each: {exc.message}"
            ) from None
        each = image_jobs.estimate(ctx, planned)
        if each is None:
            each = Estimate(usd=Decimal(0), lines=["prices are not loaded"], unpriced=True)
        total += each.usd * n
        unpriced = unpriced or each.unpriced
        untold = untold or each.untold
        low = None if low is None or each.low_usd is None else low + each.low_usd * n
        what = (
            f"{count} image{'s' if count != 1 else ''} at {planned.request.size or 'default size'}"
        )
        lines.append(f"{n} item(s) × {what}: {n} × {spending.amount(each)}")
    images = sum(item.count for item in items)
    estimate = Estimate(
        usd=total.quantize(Decimal("0.000001")),
        lines=lines,
        unpriced=unpriced,
        low_usd=low,
        untold=untold,
    )
    estimate = spending.for_budget(
        estimate,
        ctx.services.operator_limits,
        backend=first.backend.id,
        model=first.request.model,
        units=images,
    )
    label = f"{images} image{'s' if images != 1 else ''} with {first.label}"
    return Priced(backend, label, quality, size, estimate, images)


def _backend_spec(args: StartBatchArgs) -> str | None:
    if args.model and args.backend and ":" not in args.backend:
        return f"{args.backend}:{args.model}"
    if args.model and not args.backend:
        raise InvalidInput("Name the backend with the model, e.g. --backend openai --model NAME.")
    return args.backend


def question(
    title: str, items: Sequence[NewBatchItem], priced: Priced, checks: list[str], qc_retries: int
) -> str:
    lines = [f"**Start the batch '{title}'**: {len(items)} item(s), {priced.label}."]
    lines.append(spending.summary(priced.estimate, f"the batch ({priced.images} images)"))
    if checks and qc_retries:
        worst = priced.estimate.usd * (1 + qc_retries)
        lines.append(
            f"Each result is checked ({', '.join(checks)}); an item that fails is made again "
            f"with a new seed up to {qc_retries} more time(s), so the worst case, if every "
            f"item failed every check, is {money.usd(worst, 4)}."
        )
    else:
        lines.append("No quality checks apply (no style with checks), so nothing is retried.")
    lines.append(
        "Each item is held against your budgets as it starts: a budget stops the batch "
        "cleanly. It runs in the background; you can leave and come back."
    )
    shown = ", ".join(item.label for item in items[:5]) + (", …" if len(items) > 5 else "")
    lines.append(f"Items: {shown}")
    return "\n\n".join(lines) + "\n\nStart it?"


def title_of(items: Sequence[NewBatchItem], style: str | None) -> str:
    names = ", ".join(item.label for item in items[:TITLE_LABELS])
    more = "…" if len(items) > TITLE_LABELS else ""
    head = f"{style.capitalize()} batch" if style else "Batch"
    return f"{head} of {len(items)}: {names}{more}"[:TITLE_MAX]


# --------------------------------------------------------------------------- starting


async def _start_batch(ctx: ToolContext, args: StartBatchArgs) -> tuple[str, ToolArtifact]:
    text, _ = await launch(ctx, args)
    return text, ToolArtifact()


async def launch(ctx: ToolContext, args: StartBatchArgs) -> tuple[str, BatchRecord]:
    """Check, price, confirm, store and start the batch; (the chat's text, its row).

    The row is returned so a caller that follows the batch (the jobs API,
    tools/api_jobs_runner.py) knows which one it started: two batches started at the
    same moment in one conversation cannot be told apart any other way.
    """
    from tools.batch_quality import checks_for
    from tools.batch_runner import BatchSpec

    runner = runner_of(ctx)
    setup = setup_of(ctx)
    specs = read_items(ctx, args, setup.max_items)
    items = build_items(ctx, args, specs)
    priced = price(ctx, args, items)
    style = _style_name(ctx, args.style, "--style")
    checks = checks_for(ctx.services.styles.get(style) if style else None)
    spec = BatchSpec(
        backend=priced.backend,
        size=priced.size,
        quality=priced.quality,
        style=style,
        qc_retries=runner.qc_retries,
        error_retries=runner.error_retries,
        checks=tuple(checks),
    )
    title = title_of(items, style)
    if not await ctx.port.confirm(question(title, items, priced, checks, runner.qc_retries)):
        raise spending.Declined("Cancelled: the batch did not start and nothing was spent.")
    display = setup.display(ctx.turn.thread_id, None) if setup.display is not None else None
    batch = await runner.store.create(
        user_id=ctx.turn.user_id,
        thread_id=ctx.turn.thread_id,
        title=title,
        spec=spec.to_dict(),
        items=items,
        estimate_usd=priced.estimate.usd,
        instance_id=runner.instance_id(),
        message_id=display.message_id if display is not None else ctx.turn.message_id,
    )
    if display is not None:
        await display.open(batch)
    await runner.start(ctx, batch, display.watcher() if display is not None else None)
    short = batch.id[:SHORT_ID]
    text = (
        f"Batch `{short}` started: {len(items)} item(s), estimated "
        f"{spending.amount(priced.estimate)}. Its progress is shown in this conversation; "
        f"`/batch pause {short}`, `/batch resume {short}`, `/batch stop {short}`, "
        f"`/batch status {short}`."
    )
    return text, batch


# --------------------------------------------------------------------------- managing


async def _manage(ctx: ToolContext, args: ManageBatchesArgs) -> tuple[str, ToolArtifact]:
    runner = runner_of(ctx)
    user_id = ctx.turn.user_id
    if args.action == "status" and not args.batch_id:
        text = await list_batches(runner.store, user_id)
        return text, ToolArtifact(text=text)
    batch = await resolve(runner.store, user_id, args.batch_id)
    short = batch.id[:SHORT_ID]
    if args.action == "status":
        text = await describe(runner.store, batch, user_id)
    elif args.action == "pause":
        await runner.pause(batch.id, user_id)
        text = (
            f"Batch `{short}` is paused: no new item starts (those running finish). "
            f"`/batch resume {short}` continues it."
        )
    elif args.action == "resume":
        setup = setup_of(ctx)
        display = setup.display(batch.thread_id, batch) if setup.display is not None else None
        await runner.resume(batch.id, user_id, display.watcher() if display else None)
        text = f"Batch `{short}` continues with the items not done yet."
    else:
        await runner.stop(batch.id, user_id)
        text = (
            f"Batch `{short}` is stopped: items running were cancelled and nothing more "
            "is spent on it. What was made is kept."
        )
    return text, ToolArtifact(text=text)


async def list_batches(store: BatchStore, user_id: str) -> str:
    batches = await store.for_user(user_id, limit=MAX_LISTED)
    if not batches:
        return (
            "You have no batches. Start one: `/batch apple, banana, cherry --style crayon`, "
            "or attach a .txt/.csv list to a `/batch` message."
        )
    lines = ["| id | batch | status | done | failed | left |", "|---|---|---|---|---|---|"]
    for batch in batches:
        counts = await store.counts(batch.id)
        left = counts["pending"] + counts["running"]
        lines.append(
            f"| `{batch.id[:SHORT_ID]}` | {batch.title} | {batch.status} | {counts['done']} "
            f"| {counts['failed']} | {left} |"
        )
    lines.append("\n`/batch status ID` · `/batch pause ID` · `/batch resume ID` · `/batch stop ID`")
    return "\n".join(lines)


async def describe(store: BatchStore, batch: BatchRecord, user_id: str) -> str:
    items = await store.items(batch.id, user_id)
    by_status = {status: [i for i in items if i.status == status] for status in _ITEM_ORDER}
    cost = sum((item.cost_usd for item in items), Decimal(0))
    lines = [
        f"**{batch.title}** (`{batch.id[:SHORT_ID]}`): {batch.status}. "
        + ", ".join(f"{len(by_status[s])} {s}" for s in _ITEM_ORDER)
        + f"; spent {money.usd(cost, 4)} of an estimated {money.usd(batch.estimate_usd, 4)}."
    ]
    if batch.stop_reason:
        lines.append(f"Stopped: {batch.stop_reason}")
    if by_status["running"]:
        lines.append("Running: " + ", ".join(i.label for i in by_status["running"][:10]))
    failed = by_status["failed"]
    if failed:
        lines.append("Failed:\n" + "\n".join(f"- {i.label}: {i.error}" for i in failed[:20]))
    lines.append(links(batch.id))
    return "\n\n".join(lines)


_ITEM_ORDER = ("done", "running", "failed", "pending")


start_batch = Tool(
    name="start_batch",
    description=DESCRIPTION,
    args=StartBatchArgs,
    run=_start_batch,
    commands=(
        Command(
            "batch",
            "list-checks",
            "One image per object of a list: /batch apple, banana, cherry --style crayon "
            "(or one per line below /batch, or attach a .txt/.csv) · /batch status · pause · "
            "resume · stop",
            text="text",
        ),
    ),
)


def _manage_command(action: str, icon: str, summary: str) -> Command:
    return Command(
        f"batch {action}",
        icon,
        summary,
        text="batch_id",
        preset={"action": action},
    )


manage_batches = Tool(
    name="manage_batches",
    description=MANAGE_DESCRIPTION,
    args=ManageBatchesArgs,
    run=_manage,
    commands=(
        _manage_command("status", "list", "Your batches, or one: /batch status [ID]"),
        _manage_command("pause", "pause", "Pause a batch: /batch pause ID"),
        _manage_command("resume", "play", "Resume a batch: /batch resume ID"),
        _manage_command("stop", "square", "Stop a batch: /batch stop ID"),
    ),
)
