"""Stable Video Diffusion on this machine through diffusers: an image becomes a clip.

SVD animates a still; it takes no text. Text-to-video on this backend is therefore done
by the tool, which draws a keyframe with an image backend first. What a model needs when
the request does not say comes from its name (SVD-XT was trained on 25 frames, SVD on
14) or, for a model folder, from its UNet config. Which models a user may name is
`pipelines/model_sources.py`'s rule, checked before any folder is read.

Memory: the VAE decodes `decode_chunk_size` frames at a time. diffusers' default decodes
every frame at once, which for 25 frames at 1024x576 needs far more memory than the
denoising itself; a small chunk bounds the peak at a little speed.

The job runs on the same `JobRunner` as local images (one job per device at a time; the
image backend's queue is shared when there is one), with the same device and number
format choices (`pipelines/devices.py`) and a CPU generator per seed. The pipeline has
no interrupt flag, so a stop requested through the `Progress` object raises from the
step callback: the job ends within one step and nothing is kept.

torch and diffusers are imported only inside the job.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import io
import json
import math
import re
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import InvalidInput
from pipelines import devices, job_runners
from pipelines.backend_settings import BackendSettings
from pipelines.images.base import InputImage, SizeRange
from pipelines.images.pipeline_cache import PipelineCache, _dtype_argument, _source, load_error
from pipelines.job_queue import JobCancelled, JobQueue, JobRunner
from pipelines.model_sources import ModelSources
from pipelines.progress import Progress
from pipelines.video.video_base import (
    VideoCapabilities,
    VideoRequest,
    VideoResult,
    check_video_request,
)
from pipelines.video.video_encoding import encode_mp4

DEFAULT_MODEL = "stabilityai/stable-video-diffusion-img2vid-xt"
SUGGESTED_MODELS = (
    "stabilityai/stable-video-diffusion-img2vid-xt",
    "stabilityai/stable-video-diffusion-img2vid",
)
NATIVE_SIZE = (1024, 576)
SIZES = ("1024x576", "576x1024", "768x768")
# Down to 32 px so tiny test models run in a blink; the VAE works on an 8 px grid.
SIZE_RANGE = SizeRange(min_side=32, max_side=1024, multiple=8, max_pixels=1024 * 576)
FPS_RANGE = (3, 30)  # the frame rates SVD was micro-conditioned on in training
DEFAULT_FPS = 7
DEFAULT_STEPS = 25
MOTION_BUCKET_ID = 127  # SVD's default amount of motion
NOISE_AUG_STRENGTH = 0.02
DECODE_CHUNK_SIZE = 4


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def native_frames(model: str, source: str | None = None) -> int:
    """Frames the model was trained to make: a folder's UNet config, else its name.

    Only an absolute folder (`source`, from ModelSources.source) is read: a hub id that is
    also a folder name under the working directory must not change the answer.
    """
    source = source or model
    config = Path(source) / "unet" / "config.json"
    if Path(source).is_absolute() and config.is_file():
        try:
            frames = json.loads(config.read_text(encoding="utf-8")).get("num_frames")
        except (OSError, ValueError):
            frames = None
        if isinstance(frames, int) and frames >= 2:
            return frames
    return 25 if re.search(r"xt\b|xt[-_]", model.lower()) else 14


@dataclass(frozen=True)
class ClipSpec:
    """A fully resolved request: what the worker thread needs, as plain data."""

    model: str
    image: InputImage
    width: int
    height: int
    frames: int
    fps: int
    steps: int
    seed: int
    decode_chunk_size: int
    plan: devices.DevicePlan | None = None
    source: str = ""  # what the loader gets; "" = model


class LocalStableVideo:
    id = "local"
    label = "Local diffusers"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        runner: JobRunner | None = None,
        cache: PipelineCache | None = None,
        decode_chunk_size: int = DECODE_CHUNK_SIZE,
        models_dir: Path | None = None,
    ) -> None:
        if decode_chunk_size < 1:
            raise ValueError("decode_chunk_size must be at least 1")
        self.default_model = model
        self.sources = ModelSources((model,), models_dir)
        self.device = device
        self.runner: JobRunner = runner or JobQueue()
        # Video pipelines are big: keep one loaded, apart from the image models.
        self.cache = cache or PipelineCache(max_models=1, loader=load_svd)
        self.decode_chunk_size = decode_chunk_size
        self._plan: devices.DevicePlan | None = None

    def capabilities(self, model: str | None = None) -> VideoCapabilities:
        model = model or self.default_model
        frames = native_frames(model, self.sources.source(model))
        return VideoCapabilities(
            text_to_video=False,
            image_to_video=True,
            fps_range=FPS_RANGE,
            default_fps=DEFAULT_FPS,
            default_seconds=frames / DEFAULT_FPS,
            frames_range=(2, frames),
            sizes=SIZES,
            size_range=SIZE_RANGE,
            seed=True,
            prompt="none",
            steps=True,
        )

    def suggested_models(self) -> list[str]:
        return list(dict.fromkeys([self.default_model, *SUGGESTED_MODELS]))

    async def generate(
        self, request: VideoRequest, progress: Progress | None = None
    ) -> VideoResult:
        if request.image is not None and not request.size:
            request = replace(request, size=_size_for_input(request.image))
        checked = check_video_request(self, request)
        assert checked.image is not None and checked.model is not None  # checked above
        source = self.sources.source(checked.model)
        width, height = checked.width_height or NATIVE_SIZE
        spec = ClipSpec(
            model=checked.model,
            image=checked.image,
            width=width,
            height=height,
            frames=checked.frames,
            fps=checked.fps or DEFAULT_FPS,
            steps=checked.steps or DEFAULT_STEPS,
            seed=checked.seed if checked.seed is not None else secrets.randbelow(2**32),
            decode_chunk_size=min(self.decode_chunk_size, checked.frames),
            source=source,
        )
        plan = await self._device_plan()
        spec = replace(spec, plan=plan)
        video = await self.runner.run(
            plan.device, functools.partial(render_clip, spec, self.cache), progress or Progress()
        )
        plan = job_runners.plan_used(self.runner, plan)
        return VideoResult(
            video=video,
            backend=self.id,
            model=spec.model,
            prompt_sent=None,
            parameters={
                "task": "img2vid",
                "size": f"{spec.width}x{spec.height}",
                "frames": spec.frames,
                "fps": spec.fps,
                "steps": spec.steps,
                "motion_bucket_id": MOTION_BUCKET_ID,
                "noise_aug_strength": NOISE_AUG_STRENGTH,
                "decode_chunk_size": spec.decode_chunk_size,
                "device": plan.device,
                "dtype": plan.dtype,
            },
            seed=spec.seed,
            seed_honoured=True,
        )

    async def _device_plan(self) -> devices.DevicePlan:
        # The first call imports torch (seconds): do it off the event loop, once. A
        # worker plans its own device; this process then need not have torch at all.
        if job_runners.plans_on_worker(self.runner):
            return job_runners.planned_here(self.device)
        if self._plan is None:
            self._plan = await asyncio.to_thread(devices.plan, self.device)
        return self._plan


def _size_for_input(image: InputImage) -> str:
    """The input's aspect ratio at about SVD's native pixel count, in multiples of 8.

    Sides round down, so the result never exceeds the native pixel count.
    """
    scale = math.sqrt(NATIVE_SIZE[0] * NATIVE_SIZE[1] / max(1, image.width * image.height))

    def side(length: int) -> int:
        return min(SIZE_RANGE.max_side, max(SIZE_RANGE.min_side, int(length * scale) // 8 * 8))

    return f"{side(image.width)}x{side(image.height)}"


# --- The job: runs in a device worker thread ------------------------------------------


def load_svd(model: str, plan: devices.DevicePlan) -> Any:
    """Load a Stable Video Diffusion pipeline onto the plan's device, or explain why not."""
    from diffusers import StableVideoDiffusionPipeline

    source = _source(model)
    try:
        pipe = StableVideoDiffusionPipeline.from_pretrained(source, **_dtype_argument(plan))
    except (OSError, ValueError, TypeError) as exc:
        raise load_error(
            model, source, exc, "a Stable Video Diffusion pipeline", "the video model"
        ) from exc
    pipe = pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_clip(spec: ClipSpec, cache: PipelineCache, progress: Progress) -> Any:
    """Load (or reuse) the pipeline, denoise the clip, decode it in chunks, encode MP4."""
    plan = spec.plan
    assert plan is not None, "generate() sets the device plan"
    source = spec.source or spec.model
    if not cache.is_loaded(source, plan):
        progress.report(0, spec.steps, f"loading {spec.model}")
    pipe = cache.get(source, plan)
    if progress.cancelled:
        raise JobCancelled("stopped by the user before denoising")
    image = _decode(spec.image).resize((spec.width, spec.height))
    output = pipe(
        image,
        height=spec.height,
        width=spec.width,
        num_frames=spec.frames,
        num_inference_steps=spec.steps,
        fps=spec.fps,
        motion_bucket_id=MOTION_BUCKET_ID,
        noise_aug_strength=NOISE_AUG_STRENGTH,
        decode_chunk_size=spec.decode_chunk_size,
        generator=devices.seeded_generators([spec.seed])[0],
        callback_on_step_end=_step_callback(spec, progress),
        output_type="pil",
    )
    if progress.cancelled:
        raise JobCancelled("stopped by the user")
    frames = output.frames[0]
    progress.report(spec.steps, spec.steps, f"encoding {len(frames)} frames")
    return encode_mp4(frames, spec.fps)


def _step_callback(spec: ClipSpec, progress: Progress) -> Any:
    """Report each denoising step; stop the job when the user asked to."""

    def on_step_end(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict:
        total = getattr(pipe, "_num_timesteps", None) or spec.steps
        note = "decoding frames" if step + 1 >= total else "denoising"
        progress.report(step + 1, total, note)
        if progress.cancelled:
            raise JobCancelled("stopped by the user")
        return kwargs

    return on_step_end


def _decode(image: InputImage) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"The input image ({image.mime}) could not be read.") from exc


def create_video_backend(settings: BackendSettings, images: Any = None) -> LocalStableVideo | None:
    """None when turned off or when the local extra (torch, diffusers) is not installed.

    The image backend's job queue is reused when there is one, so a clip and an image
    never run on the device at the same time.
    """
    if not settings.local_enabled:
        return None
    remote = bool(job_runners.broker_url_of(settings))
    if not remote and not (_installed("torch") and _installed("diffusers")):
        return None
    shared = next((b for b in (images.available() if images else []) if b.id == "local"), None)
    return LocalStableVideo(
        model=settings.local_video_model,
        device=settings.local_device,
        runner=getattr(shared, "runner", None) or job_runners.runner_for(settings),
        models_dir=settings.local_models_dir,
    )
