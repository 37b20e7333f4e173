"""generate_video: animate an image of the conversation, or make a clip from words.

Image-to-video starts from any image the user may see (by id, or "latest"); with no
image and no prompt it animates the most recent one ("animate it"). Text-to-video goes
straight to the model when it can do it; a model that only animates images (Stable
Video Diffusion, Kling 2.1) gets a keyframe drawn first with the conversation's image
backend, which is shown, recorded like any image, and then animated, so the user sees
what is being animated and can reuse it.

Everything the video model would refuse (length, frame rate, size, mode) is refused
before anything is spent, the keyframe included. The clip is priced before it runs and
goes through `spending.paid_action` (estimate shown, confirmation above the threshold,
budget reserved, settled with the actual cost or released on failure), then stored with
its lineage: source image, backend, model, length, frames, rate, seed and cost.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, Field

from memory.images import ImageRecord
from memory.videos import NewVideo, VideoRecord, VideoStore
from pipelines.catalogue.pricing import Cost
from pipelines.images.base import InputImage
from pipelines.video.video_base import (
    VideoBackend,
    VideoRequest,
    VideoResult,
    check_video_request,
)
from pipelines.video.video_registry import VideoBackendRegistry
from tools import image_jobs, lora_access, spending
from tools.context import ToolArtifact, ToolContext
from tools.declaration import Command, Option, Tool

LATEST = "latest"
# Stands in for a keyframe not drawn yet, so the clip's request is checked (and refused
# if it must be) before the keyframe costs anything.
_KEYFRAME_TO_COME = InputImage(data=b"", mime="image/png", width=1, height=1)


class GenerateVideoArgs(BaseModel):
    prompt: str | None = Field(
        None,
        description=(
            "What happens in the clip (motion, camera). For text-to-video, describe the "
            "whole scene."
        ),
    )
    image_id: Annotated[str | None, Option(flag="image", image=True)] = Field(
        None,
        description=(
            "The image to animate: its full id, or 'latest' for the conversation's most "
            "recent image. Leave empty for a clip from the prompt alone (text-to-video). "
            "With neither prompt nor image_id, the latest image is animated."
        ),
    )
    seconds: float | None = Field(None, description="Clip length in seconds (model default).")
    fps: int | None = Field(None, description="Frames per second (model default).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, where the model lets you choose.")
    seed: int | None = Field(None, description="Seed for reproducible results, if supported.")
    steps: int | None = Field(None, description="Denoising steps (local models).")
    backend: str | None = Field(
        None,
        description=(
            "Only when the user asks for a specific video backend/model: 'local', "
            "'replicate' or 'replicate:owner/name' (e.g. replicate:kwaivgi/kling-v2.1)."
        ),
    )


DESCRIPTION = (
    "Make a short video clip. To animate an existing image ('animate the fox', 'make it "
    "move') pass image_id (or 'latest') and describe the motion in prompt; for a clip "
    "from words alone pass only prompt. The clip is shown in the chat and saved."
)


def _stores(ctx: ToolContext) -> tuple[VideoStore, VideoBackendRegistry]:
    if ctx.services.videos is None or ctx.services.video_backends is None:
        raise RuntimeError(
            "Services.videos and .video_backends are not set: build them with a VideoStore "
            "and a VideoBackendRegistry."
        )
    return ctx.services.videos, ctx.services.video_backends


def choose_backend(
    ctx: ToolContext, registry: VideoBackendRegistry, spec: str | None
) -> tuple[VideoBackend, str]:
    """The asked backend, else the conversation's image backend if it makes video."""
    if spec:
        return registry.resolve(spec)
    image_spec = ctx.turn.defaults.backend or ""
    backend = registry.default_for(image_spec.partition(":")[0].strip().lower() or None)
    return backend, backend.default_model


async def _generate_video(ctx: ToolContext, args: GenerateVideoArgs) -> tuple[str, ToolArtifact]:
    store, registry = _stores(ctx)
    video_backend, model = choose_backend(ctx, registry, args.backend)
    # Another user's Replicate-trained LoRA model is theirs alone (tools/lora_access.py).
    await lora_access.authorise(ctx, video_backend.id, model, ())
    notes: list[str] = []
    status = ctx.services.backends.check_model(video_backend.id, model, "video model")
    warning = status.warning() if status is not None else None
    if warning:
        notes.append(warning)
    caps = video_backend.capabilities(model)
    label = f"{video_backend.label} {model}"
    prompt = (args.prompt or "").strip() or None
    animate = bool(args.image_id) or prompt is None
    keyframe_needed = not animate and not caps.text_to_video

    # 1. The source image (the user's own, or one to draw), and the clip's request,
    #    checked before anything runs.
    source: ImageRecord | None = None
    if animate:
        source = await ctx.image(None if args.image_id in (None, LATEST) else args.image_id)
    sent_prompt = prompt
    if prompt and caps.prompt == "none" and (animate or keyframe_needed):
        sent_prompt = None
        if animate:
            notes.append(
                f"{label} takes no prompt: the motion comes from the image alone, so "
                f"{prompt!r} was recorded but not used."
            )
    if args.seed is not None and not caps.seed:
        notes.append(
            f"{label} has no seed parameter: seed {args.seed} was recorded but not used, so this "
            "clip cannot be reproduced exactly."
        )
    request = VideoRequest(
        prompt=sent_prompt,
        model=model,
        seconds=args.seconds,
        fps=args.fps,
        size=args.size,
        seed=args.seed if caps.seed else None,
        steps=args.steps,
    )
    first_frame = _KEYFRAME_TO_COME if keyframe_needed else None
    if source is not None:
        first_frame = await image_jobs.input_image(ctx, source)
    check_video_request(video_backend, replace(request, image=first_frame))

    # 2. Text-to-video on an image-to-video model: draw the keyframe, show it.
    artifact = ToolArtifact(notes=notes)
    if keyframe_needed:
        assert prompt is not None
        source, keyframe, shown = await _draw_keyframe(ctx, prompt, label)
        notes.append(
            f"{label} animates images only, so a keyframe was drawn first (image {source.id[:8]})."
        )
        if not shown:
            artifact.images.extend(keyframe.images)
        first_frame = await image_jobs.input_image(ctx, source)
    request = replace(request, image=first_frame)

    # 3. Price it, then run it as a paid action and record it.
    estimate = (
        ctx.services.prices.estimate(video_backend.id, model, n=1)
        if ctx.services.prices is not None
        else None
    )
    if estimate is None:
        record, data = await _make(
            ctx, store, video_backend, request, prompt, source, keyframe_needed, None
        )
    else:
        async with spending.paid_action(
            ctx,
            backend=video_backend.id,
            model=model,
            what="video",
            estimate=estimate,
            label=f"a clip with {label}",
        ) as charge:
            record, data = await _make(
                ctx, store, video_backend, request, prompt, source, keyframe_needed, charge
            )
    artifact.videos.append((record, data))
    return summary(record, label, notes), artifact


async def _draw_keyframe(
    ctx: ToolContext, prompt: str, video_label: str
) -> tuple[ImageRecord, ToolArtifact, bool]:
    """A first frame from the conversation's image backend, shown before the clip runs.

    The flag says whether the port showed it now; if not, it goes out with the clip.
    """
    planned = image_jobs.plan(ctx, prompt)
    keyframe = await image_jobs.run(ctx, planned, prompt_typed=prompt)
    record = keyframe.images[0][0]
    captioned = replace(
        keyframe,
        caption=(
            f"Keyframe for the clip: *{record.prompt_sent[:300]}* (image "
            f"`{record.id[:8]}`, {planned.label}). Animating it with {video_label}…"
        ),
    )
    return record, keyframe, await ctx.port.show(captioned)


async def _make(
    ctx: ToolContext,
    store: VideoStore,
    backend: VideoBackend,
    request: VideoRequest,
    prompt_typed: str | None,
    source: ImageRecord | None,
    keyframe: bool,
    charge: spending.Charge | None,
) -> tuple[VideoRecord, bytes]:
    """Generate, price, and store the clip with its lineage."""
    progress = ctx.port.progress(f"{backend.label} {request.model}")
    started = time.perf_counter()
    result = await backend.generate(request, progress)
    duration_ms = int((time.perf_counter() - started) * 1000)
    cost = _actual_cost(ctx, result, duration_ms)
    if charge is not None and cost is not None:
        # Made means paid: settled even if storing it fails below.
        await charge.settle(cost)
    video = result.video
    parameters: dict[str, Any] = {
        **result.parameters,
        "request": {
            key: value
            for key, value in (
                ("seconds", request.seconds),
                ("fps", request.fps),
                ("size", request.size),
                ("steps", request.steps),
                ("seed", request.seed),
            )
            if value is not None
        },
        "metrics": result.metrics or None,
        "seed_honoured": result.seed_honoured,
        "keyframe": keyframe,  # the source image was drawn for this clip
    }
    if source is not None:
        parameters["source"] = {"image_id": source.id, "prompt": source.prompt_sent[:1000]}
    if cost is not None:
        parameters["cost"] = {
            "usd": str(cost.usd),
            "source": cost.source,
            "unpriced": cost.unpriced,
            "lines": cost.lines,
        }
    record = await store.record(
        ctx.turn.thread_id,
        ctx.turn.user_id,
        NewVideo(
            data=video.data,
            poster=video.poster,
            mime=video.mime,
            width=video.width,
            height=video.height,
            frames=video.frames,
            fps=video.fps,
            seconds=video.seconds,
            prompt_typed=prompt_typed or "",
            prompt_sent=result.prompt_sent,
            backend=result.backend,
            model=result.model,
            parameters=parameters,
            seed=result.seed,
            source_image_id=source.id if source is not None else None,
            message_id=ctx.turn.message_id,
            cost_usd=None if cost is None or cost.unpriced else cost.usd,
            duration_ms=duration_ms,
        ),
    )
    return record, video.data


def _actual_cost(ctx: ToolContext, result: VideoResult, duration_ms: int) -> Cost | None:
    if ctx.services.prices is None:
        return None
    return ctx.services.prices.actual(
        result.backend,
        result.model,
        n=1,
        metrics=result.metrics,
        gpu_seconds=duration_ms / 1000 if result.backend == "local" else None,
    )


def summary(record: VideoRecord, label: str, notes: list[str]) -> str:
    """The tool result the model reads: the clip's id and what it is, then any notes."""
    text = (
        f"Made a {record.seconds:.3g} s clip [{record.id}] at {record.width}x{record.height}, "
        f"{record.frames} frames at {record.fps:g} fps, with {label}"
    )
    if record.source_image_id:
        text += f", from image {record.source_image_id}"
    if record.prompt_sent:
        text += f", for the prompt: {record.prompt_sent}"
    if record.seed is not None:
        text += f" (seed {record.seed})"
    if notes:
        text += "\nNote: " + " ".join(notes)
    return text


generate_video = Tool(
    name="generate_video",
    description=DESCRIPTION,
    args=GenerateVideoArgs,
    run=_generate_video,
    commands=(
        Command(
            "video",
            "clapperboard",
            "Make a clip: /video a fox running in snow [--image ID|latest] --seconds 5 --fps 24",
            text="prompt",
        ),
        Command(
            "animate",
            "film",
            "Animate the latest image: /animate the fox turns its head [--image ID] --seconds 4",
            text="prompt",
            preset={"image_id": LATEST},
        ),
    ),
)
