"""train_lora: "learn this style" — a LoRA from the conversation's images, in the background.

One request with sensible defaults: the images are the ones the user kept in this
conversation unless named (or uploaded as a zip); captions are their recorded prompts
with the trigger word in front; every image's origin and licence go into the dataset's
manifest, kept next to the LoRA. Before anything starts the user sees how long it should
take, how much memory and what it costs, and must confirm (always: a training ties up
the GPU for minutes to hours). Then it runs as a background job (tools/training_jobs.py)
and this call returns at once; the chat stays usable. `stop_training` and
`resume_training` act on it; `/train status` reads its row.

Checks come first and name what is wrong: the name (free on disk and in the user's
registry), the images (the user's own, at least two), the settings (the trainer's own
checks), before the dataset is written or anything is asked.

Length: starting and resuming share every check, the dataset handling and the estimate;
the three training tools are declared here together so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from core.errors import AtelierError, InvalidInput
from memory.images import ImageRecord
from memory.loras import FINAL, LoraRecord
from pipelines.training.lora_dataset import (
    DatasetImage,
    DatasetLimits,
    PreparedDataset,
    check_trigger_word,
    images_from_zip,
    load_dataset,
    prepare_dataset,
)
from pipelines.training.lora_formats import LoraLayout, check_lora_name
from tools import lora_access, spending
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool
from tools.training_estimate import (
    TrainingEstimate,
    duration,
    local_estimate,
    replicate_estimate,
)
from tools.training_jobs import TrainingJobs, TrainingSpec

if TYPE_CHECKING:
    from pipelines.training.lora_training import TrainingParams

DEFAULT_STEPS = 1000
DEFAULT_RANK = 16
DEFAULT_RESOLUTION = {"local": 512, "replicate": 1024}
DEFAULT_LEARNING_RATE = {"local": 1e-4, "replicate": 4e-4}
SAMPLES_PER_RUN = 4  # sample images shown during a local training
SAMPLE_STEPS = 10
MAX_IMAGE_IDS = 200


class TrainLoraArgs(BaseModel):
    name: str = Field(description="Name of the new LoRA: letters, digits, '-' or '_'.")
    trigger_word: Annotated[str | None, Option(flag="trigger")] = Field(
        None,
        description="One rare word that calls up the style/subject in prompts, e.g. 'TOK'. "
        "Defaults to the name.",
    )
    images: Annotated[list[str] | None, Option(image=True)] = Field(
        None,
        description="Image ids to train on. Omit to use the images kept in this conversation.",
    )
    steps: int | None = Field(None, description="Training steps (default 1000).")
    rank: int | None = Field(None, description="LoRA rank (default 16).")
    learning_rate: Annotated[float | None, Option(flag="lr")] = Field(
        None, description="Default 1e-4 local, 4e-4 Replicate."
    )
    resolution: int | None = Field(
        None, description="Training size in px (512 local, 1024 Replicate)."
    )
    base_model: Annotated[str | None, Option(flag="base")] = Field(
        None, description="Model to train on (local: the local default; Replicate: the trainer)."
    )
    backend: Literal["local", "replicate"] = Field("local", description="local or replicate.")
    licence: str | None = Field(
        None, description="The licence the user states for uploaded images, e.g. 'own work'."
    )
    destination: str | None = Field(
        None, description="Replicate only: owner/name of the user's model to push it to."
    )


DESCRIPTION = (
    "Train a LoRA ('learn this style/subject as NAME') from this conversation's kept images "
    "(or the image ids given), in the background. The user is shown the time/cost estimate "
    "and confirms. Afterwards prompts containing the trigger word use it."
)


class StopTrainingArgs(BaseModel):
    name: str | None = Field(None, description="The training to stop (omit if only one runs).")


STOP_DESCRIPTION = "Stop a running LoRA training; its checkpoint is kept for resuming."


class ResumeTrainingArgs(BaseModel):
    name: str = Field(description="The stopped or interrupted training to continue.")
    steps: int | None = Field(None, description="Total steps to reach (default: as planned).")


RESUME_DESCRIPTION = "Continue a stopped or interrupted local LoRA training from its checkpoint."


def _jobs(ctx: ToolContext) -> TrainingJobs:
    if ctx.services.trainings is None:
        raise InvalidInput("LoRA training is not available in this app.")
    return ctx.services.trainings


async def _train_lora(ctx: ToolContext, args: TrainLoraArgs) -> tuple[str, ToolArtifact]:
    """Check, prepare the dataset, estimate, confirm, start in the background; return at once.

    Zip archives come from the message's attachments (`ctx.turn`), never from the model.
    """
    jobs = _jobs(ctx)
    # 1. Inputs that need nothing loaded.
    jobs.backends.get(args.backend)  # refuses an unconfigured backend, saying how to enable it
    layout = check_lora_name(args.name, jobs.lora_dir)
    if await jobs.loras.find(ctx.turn.user_id, args.name) is not None:
        raise InvalidInput(
            f"You already have a LoRA (or a training) called {args.name!r}. Choose another name, "
            "or `/train resume NAME` to continue a stopped one."
        )
    trigger = check_trigger_word(args.trigger_word or args.name[:40])
    steps = DEFAULT_STEPS if args.steps is None else args.steps
    rank = DEFAULT_RANK if args.rank is None else args.rank
    learning_rate = (
        DEFAULT_LEARNING_RATE[args.backend] if args.learning_rate is None else args.learning_rate
    )
    resolution = DEFAULT_RESOLUTION[args.backend] if args.resolution is None else args.resolution
    licence = args.licence if args.licence is None or args.licence.strip() else None
    if licence is not None and len(licence) > 200:
        raise InvalidInput("The licence text is too long (200 characters at most).")
    # 2. Where it would run, and its own checks.
    if args.backend == "local":
        local = _local_backend(ctx)
        base = args.base_model or local.default_model
        local.model_source(base)  # a hub id, the operator's model or its models folder
        params = _local_params(steps, rank, learning_rate)
        _check_local_params(params)
        trainer_name = base
    else:
        params = None
        base, trainer_name = _replicate_checks(jobs, args.base_model, args.destination, steps, rank)
        assert args.destination is not None  # _replicate_checks refuses a missing one
        await lora_access.check_destination(jobs.loras, ctx.turn.user_id, args.destination)
        ctx.services.backends.check_model("replicate", trainer_name, "LoRA trainer")
        # An unpriced trainer the operator refuses is refused before any work is done.
        spending.for_budget(
            replicate_estimate(ctx.services.prices, trainer=trainer_name, steps=steps).cost,
            ctx.services.operator_limits,
            backend="replicate",
            model=trainer_name,
            units=1,
        )
    # 3. The images, then the dataset on disk (next to where the LoRA will be).
    items = await _dataset_images(ctx, args.images, licence)
    limits = DatasetLimits()
    dataset = await asyncio.to_thread(
        prepare_dataset,
        items,
        layout.folder,
        trigger_word=trigger,
        resolution=resolution,
        limits=limits,
    )
    try:
        # 4. The estimate, and the user's yes.
        if args.backend == "local":
            estimate = await _local_estimate(ctx, jobs, base, steps, resolution)
        else:
            estimate = replicate_estimate(ctx.services.prices, trainer=trainer_name, steps=steps)
        # What the budgets will count: an unpriced run is the operator's ceiling.
        estimate = replace(
            estimate,
            cost=spending.for_budget(
                estimate.cost,
                ctx.services.operator_limits,
                backend=args.backend,
                model=base,
                units=1,
            ),
        )
        question = _question(
            args.name, args.backend, base, dataset, steps, rank, learning_rate, estimate
        )
        confirmed = await ctx.port.confirm(question)
        if not confirmed:
            raise spending.Declined(
                f"Cancelled: the training of '{args.name}' did not start and nothing was spent."
            )
        parameters = {
            "steps": steps,
            "rank": rank,
            "learning_rate": learning_rate,
            "resolution": resolution,
            "destination": args.destination,
            **({"training": _params_dict(params)} if params is not None else {}),
        }
        spec = TrainingSpec(
            name=args.name,
            backend=args.backend,
            base_model=base,
            trigger_word=trigger,
            dataset=dataset,
            estimate=estimate,
            steps=steps,
            params=params,
            destination=args.destination,
            rank=rank,
            learning_rate=learning_rate,
            manifest=_manifest(dataset),
            parameters=parameters,
        )
        record = await jobs.start(ctx, spec)
    except BaseException:
        # Nothing started: give the name back (the prepared folder would block it).
        await asyncio.to_thread(shutil.rmtree, layout.folder, True)
        raise
    text = (
        f"Training '{record.name}' started: {steps} steps, ~{duration(estimate.seconds)}. "
        "You can keep chatting; `/train status` shows progress, `/train stop` stops it."
    )
    return text + f" Trigger word: {trigger}.", ToolArtifact()


async def _stop_training(ctx: ToolContext, args: StopTrainingArgs) -> tuple[str, ToolArtifact]:
    record = _jobs(ctx).stop(ctx.turn.user_id, args.name)
    text = f"Stopping the training of '{record.name}' after the current step; " + (
        f"its checkpoint is kept (`/train resume {record.name}` continues)."
        if record.backend == "local"
        else "the Replicate training is cancelled."
    )
    return text, ToolArtifact()


async def _resume_training(ctx: ToolContext, args: ResumeTrainingArgs) -> tuple[str, ToolArtifact]:
    """Continue a stopped/interrupted/failed local training from its newest checkpoint."""
    from pipelines.training.lora_training import LocalLoraTrainer

    jobs = _jobs(ctx)
    record = await jobs.loras.get(ctx.turn.user_id, args.name)
    if jobs.is_running(record.id):
        raise InvalidInput(f"The training of '{record.name}' is already running.")
    if record.status == "succeeded":
        raise InvalidInput(f"'{record.name}' is already trained; use it by name.")
    if record.status not in FINAL:
        raise InvalidInput(f"'{record.name}' is {record.status}; only a stopped one resumes.")
    if record.backend != "local":
        raise InvalidInput(
            "A Replicate training cannot be resumed (Replicate keeps no checkpoint); "
            "start a new one."
        )
    local = _local_backend(ctx)
    at = LocalLoraTrainer(lora_dir=jobs.lora_dir).checkpoint_step(record.name)
    if at is None:
        raise InvalidInput(
            f"The training of '{record.name}' left no checkpoint to resume from; start it "
            "again under another name."
        )
    total = args.steps or record.total_steps
    if total <= at:
        raise InvalidInput(
            f"'{record.name}' is already at step {at}; ask for more than {at} steps to continue."
        )
    layout = LoraLayout(jobs.lora_dir, record.name)
    dataset = await asyncio.to_thread(load_dataset, layout.folder)
    params = _params_from(record.parameters.get("training") or {}, total)
    _check_local_params(params)
    del local
    estimate = await _local_estimate(ctx, jobs, record.base_model, total - at, dataset.resolution)
    question = (
        f"Resume training LoRA '{record.name}' from step {at} to {total} "
        f"({total - at} steps). Estimate: {estimate.describe()}. Go ahead?"
    )
    confirmed = await ctx.port.confirm(question)
    if not confirmed:
        raise spending.Declined(f"Cancelled: '{record.name}' was not resumed; nothing was spent.")
    spec = TrainingSpec(
        name=record.name,
        backend="local",
        base_model=record.base_model,
        trigger_word=record.trigger_word,
        dataset=dataset,
        estimate=estimate,
        steps=total,
        params=params,
        resume=record,
        parameters={"steps": total, "training": _params_dict(params)},
    )
    await jobs.start(ctx, spec)
    return (
        f"Training '{record.name}' resumed from step {at}: {total - at} more steps, "
        f"~{duration(estimate.seconds)}. `/train status` shows progress.",
        ToolArtifact(),
    )


def describe_status(records: list[LoraRecord]) -> str:
    """The user's trainings and LoRAs, newest first, as `/train status` and `/loras` show."""
    if not records:
        return "You have no LoRAs yet. `/train NAME --trigger TOK` trains one from kept images."
    lines = [
        "| LoRA | trigger | backend | status | steps | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        loss = r.metrics.get("final_loss")
        if loss is None and r.losses:
            loss = r.losses[-1][1]
        shown = f"{loss:.4f}" if isinstance(loss, int | float) else "–"
        status = r.status
        if r.status == "interrupted" or (
            r.status in ("cancelled", "failed") and r.backend == "local"
        ):
            status += f" (`/train resume {r.name}`)"
        lines.append(
            f"| {r.name} | {r.trigger_word} | {r.backend} | {status} | {r.step}/{r.total_steps} "
            f"| {shown} |"
        )
    used = [r for r in records if r.status == "succeeded"]
    if used:
        first = used[0]
        how = (
            f"prompts containing **{first.trigger_word}** use '{first.name}' on the local backend"
            if first.backend == "local"
            else f"`--backend replicate:{first.replicate_version}`"
        )
        lines.append(f"\nTo use one: {how}.")
    return "\n".join(lines)


async def training_status(ctx: ToolContext) -> str:
    return describe_status(await _jobs(ctx).loras.for_user(ctx.turn.user_id))


# --------------------------------------------------------------------------- helpers


def _local_backend(ctx: ToolContext) -> Any:
    try:
        backend = ctx.services.backends.get("local")
    except AtelierError:  # not installed, or turned off
        backend = None
    if backend is None or getattr(backend, "lora_dir", None) is None:
        raise InvalidInput(
            "Local training needs the local backend (install the 'local' extra and turn it "
            "on), or train on Replicate with backend='replicate'."
        )
    return backend


def _local_params(steps: int, rank: int, learning_rate: float) -> TrainingParams:
    from pipelines.training.lora_training import TrainingParams

    every = max(1, steps // SAMPLES_PER_RUN)
    return TrainingParams(
        steps=steps,
        rank=rank,
        learning_rate=learning_rate,
        sample_every=every,
        sample_steps=SAMPLE_STEPS,
        checkpoint_every=max(5, min(100, steps // 10)),
    )


def _check_local_params(params: TrainingParams) -> None:
    from pipelines.training.lora_training import check_params

    check_params(params, image_count=max(params.batch_size, 2))


def _params_dict(params: TrainingParams) -> dict[str, Any]:
    values = asdict(params)
    values["target_modules"] = list(values["target_modules"])
    return values


def _params_from(stored: dict[str, Any], steps: int) -> TrainingParams:
    from pipelines.training.lora_training import TrainingParams

    known = {f.name for f in fields(TrainingParams)}
    values = {k: v for k, v in stored.items() if k in known}
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    values["steps"] = steps
    return TrainingParams(**values)


def _replicate_checks(
    jobs: TrainingJobs, base_model: str | None, destination: str | None, steps: int, rank: int
) -> tuple[str, str]:
    from pipelines.training.replicate_training import DEFAULT_TRAINER

    trainer = base_model or DEFAULT_TRAINER
    known = jobs.backends.get("replicate").trainers
    if trainer not in known:
        raise InvalidInput(
            f"{trainer!r} is not a Replicate LoRA trainer Atelier knows. Known: "
            f"{', '.join(sorted(known))}."
        )
    if not destination:
        raise InvalidInput(
            "Training on Replicate pushes the LoRA to a model you own: give destination="
            "'your-username/model-name' (create the model at https://replicate.com/create)."
        )
    low, high = known[trainer].step_range
    if not low <= steps <= high:
        raise InvalidInput(f"{trainer} takes {low} to {high} steps; {steps} was asked.")
    low, high = known[trainer].rank_range
    if not low <= rank <= high:
        raise InvalidInput(f"{trainer} takes a rank of {low} to {high}; {rank} was asked.")
    return trainer, trainer


async def _dataset_images(
    ctx: ToolContext,
    image_ids: list[str] | None,
    licence: str | None,
) -> list[DatasetImage]:
    """The named images (the user's own), else the ones attached to this message, else
    the kept ones; plus the images of any zip attached to this message."""
    items: list[DatasetImage] = []
    if image_ids is None and ctx.turn.attached_images:
        image_ids = list(ctx.turn.attached_images)
    for upload_name, data in ctx.turn.attached_zips:
        items += await asyncio.to_thread(
            images_from_zip, data, upload_name=upload_name, licence=licence
        )
    if image_ids is not None or not items:
        records = await _records(ctx, image_ids)
        for record in records:
            data = await asyncio.to_thread(ctx.services.images.read, record)
            items.append(_item(record, data, licence))
    return items


async def _records(ctx: ToolContext, image_ids: list[str] | None) -> list[ImageRecord]:
    if image_ids is not None:
        if len(image_ids) > MAX_IMAGE_IDS:
            raise InvalidInput(f"At most {MAX_IMAGE_IDS} images can be named for one training.")
        if len(set(image_ids)) != len(image_ids):
            raise InvalidInput("An image is named twice; name each image once.")
        return [await ctx.services.images.get(image_id, ctx.turn.user_id) for image_id in image_ids]
    if ctx.services.curations is None:
        kept_ids: list[str] = []
    else:
        verdicts = await ctx.services.curations.verdicts_for_thread(
            ctx.turn.thread_id, ctx.turn.user_id
        )
        kept_ids = [image_id for image_id, (verdict, *_) in verdicts.items() if verdict == "kept"]
    if not kept_ids:
        raise InvalidInput(
            "No images are kept in this conversation yet. Keep some first (curate them, or "
            "`/keep ID`), name the images to train on (images=[ids], or `/train NAME --images "
            "id1,id2`), or upload a zip of them."
        )
    thread_images = await ctx.services.images.for_thread(
        ctx.turn.thread_id, ctx.turn.user_id, limit=500
    )
    by_id = {record.id: record for record in thread_images}
    return [by_id[i] for i in kept_ids if i in by_id]


def _item(record: ImageRecord, data: bytes, licence: str | None) -> DatasetImage:
    if record.backend == "upload":
        return DatasetImage(data, None, "uploaded", licence, record.id)
    caption = record.prompt_sent or record.prompt_typed or None
    return DatasetImage(data, caption, "generated", None, record.id)


async def _local_estimate(
    ctx: ToolContext, jobs: TrainingJobs, base: str, steps: int, resolution: int
) -> TrainingEstimate:
    from pipelines import devices
    from pipelines.training.lora_training import TrainingParams, training_plan

    local = _local_backend(ctx)
    plan = training_plan(await asyncio.to_thread(devices.plan, local.device), TrainingParams())
    previous = next(
        (
            r
            for r in await jobs.loras.for_user(ctx.turn.user_id, status="succeeded")
            if r.backend == "local"
            and r.base_model == base
            and r.metrics.get("device") == plan.device
        ),
        None,
    )
    return await asyncio.to_thread(
        local_estimate,
        ctx.services.prices,
        base_model=base,
        device=plan.device,
        dtype=plan.dtype,
        steps=steps,
        resolution=resolution,
        previous=previous,
        source=local.model_source(base),
    )


def _question(
    name: str,
    backend: str,
    base: str,
    dataset: PreparedDataset,
    steps: int,
    rank: int,
    learning_rate: float,
    estimate: TrainingEstimate,
) -> str:
    generated = sum(1 for image in dataset.images if image.origin == "generated")
    uploaded = len(dataset.images) - generated
    where = "on this machine" if backend == "local" else "on Replicate"
    return (
        f"**Train the LoRA '{name}'** {where} on `{base}` from {len(dataset.images)} images "
        f"({generated} generated here, {uploaded} uploaded), trigger word "
        f"**{dataset.trigger_word}**: {steps} steps, rank {rank}, learning rate "
        f"{learning_rate:g}, {dataset.resolution} px.\n\n"
        f"Estimate: {estimate.describe()}. It runs in the background. Start it?"
    )


def _manifest(dataset: PreparedDataset) -> dict[str, Any]:
    """What the registry keeps of the dataset: per image origin, licence, caption, hash."""
    return {
        "trigger_word": dataset.trigger_word,
        "resolution": dataset.resolution,
        "dataset_hash": dataset.dataset_hash,
        "folder": Path(dataset.folder).name,
        "images": [
            {
                "file": image.file,
                "origin": image.origin,
                "licence": image.licence,
                "source_id": image.source_id,
                "caption": image.caption,
                "sha256": image.sha256,
            }
            for image in dataset.images
        ],
    }


async def triggered_loras(ctx: ToolContext, prompt: str) -> list[LoraRecord]:
    """The user's trained local LoRAs whose trigger word is a word of `prompt`.

    Lets "draw TOK on a beach" use the LoRA that TOK calls up without naming it; only
    LoRAs whose file is in the local LoRA folder count, so a match always loads.
    """
    if ctx.services.trainings is None:
        return []
    jobs = ctx.services.trainings
    words = {word.lower() for word in re.findall(r"[A-Za-z0-9_-]+", prompt)}
    found = []
    for record in await jobs.loras.for_user(ctx.turn.user_id, status="succeeded"):
        if record.backend != "local" or record.trigger_word.lower() not in words:
            continue
        if (jobs.lora_dir / f"{record.name}.safetensors").is_file():
            found.append(record)
    return found


train_lora = Tool(
    name="train_lora",
    description=DESCRIPTION,
    args=TrainLoraArgs,
    run=_train_lora,
    commands=(
        Command(
            "train",
            "graduation-cap",
            "Train a LoRA from kept images: /train NAME --trigger TOK [--steps N] [--images id,id]"
            " · /train status · /train stop [NAME] · /train resume NAME",
            text="name",
            needs_text="Name the LoRA: /train NAME --trigger TOK (see /help).",
        ),
    ),
)


stop_training = Tool(
    name="stop_training",
    description=STOP_DESCRIPTION,
    args=StopTrainingArgs,
    run=_stop_training,
    commands=(Command("train stop", "square", "Stop a training: /train stop [NAME]", text="name"),),
)


resume_training = Tool(
    name="resume_training",
    description=RESUME_DESCRIPTION,
    args=ResumeTrainingArgs,
    run=_resume_training,
    commands=(
        Command(
            "train resume",
            "play",
            "Continue a training: /train resume NAME [--steps N]",
            text="name",
            needs_text="Name the training to resume: /train resume NAME.",
        ),
    ),
)
