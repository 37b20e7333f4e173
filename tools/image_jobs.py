"""The steps every image tool shares: plan a request, run it, record each image.

Planning merges three layers — the model's defaults, the conversation's settings panel,
and what this call asks for — and is honest about it: an explicit argument a model
cannot honour is refused (by `check_request`), while a panel default that does not fit
the chosen model is left out with a note, since the user never asked for it here.

Running: a call for more images than the model makes per request (a curation's
candidates, variations, `--n`) becomes several provider requests, sent in parallel
through the provider's gate (pipelines/provider_limits.py: a per-provider limit and one
shared pause on a 429). Results are recorded in request order whatever order they
arrive in, each as soon as the ones before it are; a failed request does not stop the
others (unless its error would fail them all) and is not charged; a stop cancels every
request still in flight. The money is one paid action for the whole call, reserved
once, with each request's cost recorded on it as it is stored (tools/spending.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

from core.errors import (
    InvalidInput,
)
from core.image_decoding import open_image
from memory.images import ImageRecord
from pipelines.catalogue.pricing import Estimate
from pipelines.images.base import (
    Capabilities,
    ImageBackend,
    ImageRequest,
    InputImage,
    LoraSpec,
    check_request,
)
from tools import image_parts, lora_access, spending
from tools.context import ToolArtifact, ToolContext
from tools.image_recording import REPLAYABLE, Recorder

# The most images one call may ask for; beyond the model's per-request limit it is split
# into parallel requests (`parts`).
MAX_IMAGES = 100


@dataclass
class Plan:
    backend: ImageBackend
    request: ImageRequest
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.backend.label} {self.request.model}"


def parse_loras(text: str | None) -> tuple[LoraSpec, ...]:
    """'name' or 'name:0.8', comma-separated."""
    specs = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise InvalidInput(f"LoRA weight {weight!r} is not a number (use name:0.8).") from None
        if not -4 <= value <= 4:
            raise InvalidInput(f"LoRA weight {value} is out of range (-4 to 4).")
        specs.append(LoraSpec(name.strip(), value))
    return tuple(specs)


def _fits(caps: Capabilities, name: str, value: Any) -> bool:
    if name == "size":
        return caps.allows_size(str(value))
    if name == "quality":
        return value in caps.qualities
    if name == "scheduler":
        return value in caps.schedulers
    if name == "background":
        return value in caps.backgrounds
    if name == "loras":
        return caps.lora
    return bool(getattr(caps, name, False))


def plan(
    ctx: ToolContext,
    prompt: str,
    backend_spec: str | None = None,
    *,
    inherited: dict[str, Any] | None = None,
    use_panel: bool = True,
    **asked: Any,
) -> Plan:
    """Choose backend and model, then layer: call arguments over inherited over panel.

    `inherited` holds the settings of an image being replayed (variations, forks); like
    panel defaults, an inherited value the chosen model cannot take is left out with a
    note, because the user did not ask for it in this call.
    """
    defaults = ctx.turn.defaults
    spec = backend_spec or defaults.backend or ctx.services.backends.default_id()
    backend, model = ctx.services.backends.resolve(spec)
    if not backend_spec and defaults.model and ":" not in (defaults.backend or ""):
        model = defaults.model
    notes: list[str] = []
    # A retired model is refused here, before anything is priced, reserved or sent.
    status = ctx.services.backends.check_model(backend.id, model, "image model")
    warning = status.warning() if status is not None else None
    if warning:
        notes.append(warning)
    caps = backend.capabilities(model)
    values = {k: v for k, v in asked.items() if v not in (None, (), {})}
    layers: list[tuple[str, dict[str, Any]]] = [("source image's {}", dict(inherited or {}))]
    if use_panel:
        panel = {k: v for k, v in defaults.to_dict().items() if k in _PANEL}
        layers.append(("conversation's {} setting", panel))
    for origin, layer in layers:
        for name, value in layer.items():
            if value in (None, (), {}) or name in values:
                continue
            if name in ("seed", "output_format") or _fits(caps, name, value):
                values[name] = value
            else:
                what = origin.format(name.replace("_", " "))
                notes.append(
                    f"The {what} ({_show(value)}) does not apply to "
                    f"{backend.label} {model}, so its default was used."
                )
    request = ImageRequest(prompt=prompt, model=model, **values)
    return Plan(backend=backend, request=request, notes=notes)


_PANEL = ("size", "quality", "steps", "guidance", "seed")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"{lora.name}:{lora.weight}" for lora in value)
    return str(value)


async def input_image(ctx: ToolContext, record: ImageRecord) -> InputImage:
    data = await asyncio.to_thread(ctx.services.images.read, record)
    return InputImage(
        data=data, mime=record.mime, width=record.width, height=record.height, image_id=record.id
    )


async def check_upload(data: bytes) -> tuple[str, int, int]:
    """(mime, width, height) of bytes that must be a readable, sane-sized image."""

    def probe() -> tuple[str, int, int]:
        with open_image(data) as image:
            from PIL import Image

            mime = Image.MIME.get(image.format or "", "")
            if mime not in ("image/png", "image/jpeg", "image/webp"):
                raise InvalidInput("Only PNG, JPEG and WebP images can be used.")
            return mime, image.width, image.height

    return await asyncio.to_thread(probe)


def parts(planned: Plan) -> list[int]:
    """How many images each provider request makes: the model's per-request limit each,
    the rest in the last one (one request when the model takes them all at once)."""
    n = planned.request.n
    per = max(1, planned.backend.capabilities(planned.request.model).max_n)
    return [min(per, n - start) for start in range(0, n, per)]


def checked(planned: Plan) -> Plan:
    """The plan with what the model cannot do refused and its defaults filled in.

    Done before pricing or asking about money: a request that would be refused must not
    first be priced, and the estimate should price the model's own size and quality.
    More images than one request takes are fine (they become parallel requests, each
    checked like this one), up to MAX_IMAGES.
    """
    request = planned.request
    if request.n > MAX_IMAGES:
        raise InvalidInput(
            f"One request makes at most {MAX_IMAGES} images; {request.n} were asked."
        )
    per = max(1, planned.backend.capabilities(request.model).max_n)
    first = check_request(planned.backend, replace(request, n=min(request.n, per)))
    return replace(planned, request=replace(first, n=request.n))


async def authorised(ctx: ToolContext, planned: Plan) -> Plan:
    """The plan once its LoRAs and model are the user's to use (tools/lora_access.py).

    LoRAs come back under their stored names; another user's LoRA or Replicate-trained
    model is refused like one that does not exist, before anything is priced or sent.
    """
    request = planned.request
    loras = await lora_access.authorise(ctx, planned.backend.id, request.model, request.loras)
    if loras == request.loras:
        return planned
    return replace(planned, request=replace(request, loras=loras))


def estimate(ctx: ToolContext, planned: Plan, n: int | None = None) -> Estimate | None:
    """The table's price for a planned request (`n` overrides its count, for batches)."""
    if ctx.services.prices is None:
        return None
    request = planned.request
    return ctx.services.prices.estimate(
        planned.backend.id,
        request.model,
        n=n or request.n,
        quality=request.quality,
        size=request.size,
        input_images=len(request.images),
    )


def _what(planned: Plan) -> str:
    return "edit" if planned.request.images else "image"


def describe_request(planned: Plan, n: int | None = None) -> str:
    """How an estimate names what it prices: "2 images with OpenAI gpt-image-1.5"."""
    count = n or planned.request.n
    noun = "edit" if planned.request.images else "image"
    return f"{count} {noun}{'s' if count != 1 else ''} with {planned.label}"


async def run(
    ctx: ToolContext,
    planned: Plan,
    *,
    prompt_typed: str,
    parent_id: str | None = None,
    lineage: dict[str, Any] | None = None,
    seed_requested: int | None = None,
    charge: spending.Charge | None = None,
) -> ToolArtifact:
    """Generate, then record every image with its full request, lineage and cost.

    A paid request goes through `spending.paid_action` (estimate shown, confirmation,
    budget reservation); a batch passes the `charge` it opened for all of its parts.
    """
    planned = await authorised(ctx, planned)
    priced = estimate(ctx, checked(planned))
    if charge is not None or priced is None:
        return await _generate(
            ctx, planned, prompt_typed, parent_id, lineage, seed_requested, charge
        )
    async with spending.paid_action(
        ctx,
        backend=planned.backend.id,
        model=planned.request.model,
        what=_what(planned),
        estimate=priced,
        label=describe_request(planned),
        units=planned.request.n,
    ) as opened:
        return await _generate(
            ctx, planned, prompt_typed, parent_id, lineage, seed_requested, opened
        )


async def _generate(
    ctx: ToolContext,
    planned: Plan,
    prompt_typed: str,
    parent_id: str | None,
    lineage: dict[str, Any] | None,
    seed_requested: int | None,
    charge: spending.Charge | None,
) -> ToolArtifact:
    backend, request = planned.backend, planned.request
    shown = ctx.port.progress(f"{backend.label} {request.model}")
    artifact = ToolArtifact(notes=list(planned.notes))
    record = Recorder(ctx, planned, prompt_typed, parent_id, lineage, seed_requested, charge)
    counts = parts(planned)
    if len(counts) == 1:
        made = await image_parts.request_once(ctx, backend, request, shown)
        artifact.images.extend(await record(made, request, artifact.notes))
        return artifact
    images, extra_notes = await image_parts.in_parts(ctx, backend, request, counts, shown, record)
    artifact.images = images
    artifact.notes.extend(extra_notes)
    return artifact


def summary(verb: str, artifact: ToolArtifact, label: str) -> str:
    """The tool result the model reads: ids first, so it can refer to them next turn."""
    ids = ", ".join(record.id for record, _ in artifact.images)
    first = artifact.images[0][0]
    seeds = [record.seed for record, _ in artifact.images if record.seed is not None]
    text = (
        f"{verb} {len(artifact.images)} image(s) [{ids}] at {first.width}x{first.height} "
        f"with {label} for the prompt: {first.prompt_sent}"
    )
    if seeds:
        text += f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    if first.parent_id:
        text += f"; derived from image {first.parent_id}"
    if artifact.notes:
        text += "\nNote: " + " ".join(artifact.notes)
    return text


def replay_request(record: ImageRecord) -> dict[str, Any]:
    """The request that made `record`, as keyword arguments for `plan`."""
    stored = dict(record.parameters.get("request") or {})
    values = {k: v for k, v in stored.items() if k in REPLAYABLE}
    if stored.get("loras"):
        values["loras"] = tuple(LoraSpec(name, float(weight)) for name, weight in stored["loras"])
    if "size" not in values and record.width and record.height:
        values["size"] = f"{record.width}x{record.height}"
    return values


async def with_replayed_inputs(ctx: ToolContext, planned: Plan, record: ImageRecord) -> Plan:
    """An edit's result is replayed as the same edit: same source, references and mask.

    Regenerating "make it bluer" from text alone would draw something unrelated, so
    variations and forks of an edited image re-run the edit instead.
    """
    inputs = record.parameters.get("inputs") or {}
    if not inputs.get("images"):
        return planned
    images = tuple([await input_image(ctx, await ctx.image(i)) for i in inputs["images"]])
    mask_id = inputs.get("mask")
    mask = await input_image(ctx, await ctx.image(mask_id)) if mask_id else None
    return replace(planned, request=replace(planned.request, images=images, mask=mask))
