"""Stable Diffusion-family models run on this machine through diffusers.

One backend does text-to-image, image-to-image (an input image) and inpainting (an
input image and a mask). Everything a request leaves unset comes from per-model
defaults kept as data (`MODEL_DEFAULTS`: SD-Turbo wants 1-4 steps and no guidance,
SDXL wants 1024x1024), and the defaults applied are recorded with the result.

The work runs in a device worker thread through a `JobRunner`, one job per device at a
time, so the chat stays responsive; the loaded pipelines stay in a `PipelineCache`.
A step-end callback reports progress and interrupts the pipeline when the user stops it;
a stopped job raises instead of returning a half-denoised image. While someone watches,
the same callback shows the current latent as a small picture every `PREVIEW_EVERY_S`
(`latent_preview`: a linear map, not a VAE decode, so it costs next to nothing).

Seeds are always recorded: image i of a request gets seed+i and its own CPU generator,
and is denoised on its own, so re-running it alone with its recorded seed gives the
same bytes.

Masks: white (or opaque-white) areas are repainted and black ones kept, as in diffusers.
A mask that uses transparency is read the other way, as OpenAI's edit masks are drawn:
transparent areas are repainted. A mask either uses alpha or it does not, so the two
readings never disagree about one file.

LoRAs are looked up by name as `<lora dir>/<name>.safetensors`, loaded for one request
and unloaded afterwards, so the cached pipeline is the plain model for the next one.
Whose LoRA a name is, and so who may apply it, is decided above (tools/lora_access.py);
here a missing file is refused without naming the folder or listing what is in it.

Which models a user may name is `pipelines/model_sources.py`'s rule (hub ids, the
operator's model, folders inside the operator's models folder), checked in
`capabilities` and again in `generate`, before any file is looked at.

torch, diffusers and peft are imported only inside the job: importing this module (the
registry does, at start-up) costs nothing for people who use hosted backends only.

Length: text-to-image, img2img and inpainting share loading, seeding, progress and LoRA
handling; the three modes differ by a few lines each.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import io
import math
import re
import secrets
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.errors import ContentRefused, InvalidInput
from pipelines import devices, job_runners
from pipelines.backend_settings import BackendSettings
from pipelines.images import latent_preview
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    LoraSpec,
    SizeRange,
    check_request,
)
from pipelines.images.pipeline_cache import PipelineCache, Task
from pipelines.job_queue import JobCancelled, JobQueue, JobRunner
from pipelines.model_sources import ModelSources
from pipelines.progress import Progress


@dataclass(frozen=True)
class ModelDefaults:
    """What a model family needs when the request does not say."""

    family: str
    sizes: tuple[str, ...]  # sizes[0] is the native size
    steps: int
    guidance: float
    strength: float  # image-to-image
    img2img_steps: int | None = None  # when steps x strength would leave too few
    inpaint_strength: float = 1.0
    max_steps: int = 150


_SD_SIZES = ("512x512", "768x768", "1024x1024", "512x768", "768x512")
_XL_SIZES = ("1024x1024", "768x768", "512x512", "1152x896", "896x1152", "1216x832")
TURBO = ModelDefaults(
    "turbo", _SD_SIZES, steps=1, guidance=0.0, strength=0.5, img2img_steps=2, max_steps=4
)
SDXL = ModelDefaults("sdxl", _XL_SIZES, steps=30, guidance=5.0, strength=0.6, inpaint_strength=0.99)
SD = ModelDefaults("sd", _SD_SIZES, steps=30, guidance=7.5, strength=0.6)

# First match wins, on the lower-cased model id or folder.
MODEL_DEFAULTS: tuple[tuple[str, ModelDefaults], ...] = (
    (r"turbo", TURBO),
    (r"sdxl|stable-diffusion-xl|[-_/]xl\b|xl[-_]|playground", SDXL),
    (r"", SD),
)

# Request names → (diffusers scheduler class, config overrides), made `from_config` of the
# model's own scheduler so its training schedule (betas, spacing) carries over. PNDM is
# used with PRK steps skipped, as in every SD checkpoint's config: with them it needs
# more steps than fast presets ask for.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),  # needs scipy
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}

SUGGESTED_MODELS = (
    "stabilityai/sd-turbo",
    "stabilityai/sdxl-turbo",
    "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "stabilityai/stable-diffusion-xl-base-1.0",
)

SIZE_RANGE = SizeRange(min_side=64, max_side=2048, multiple=8)
MAX_N = 4
PREVIEW_EVERY_S = 0.3  # at most this often a latent preview; the chat shows ~4 a second


def defaults_for(model: str) -> ModelDefaults:
    name = model.lower()
    return next(d for pattern, d in MODEL_DEFAULTS if re.search(pattern, name))


@functools.cache
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class RenderSpec:
    """A fully resolved request: what the worker thread needs, as plain data."""

    model: str
    task: Task
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    strength: float | None
    scheduler: str | None
    seeds: tuple[int, ...]
    loras: tuple[LoraSpec, ...]
    lora_dir: Path | None
    image: InputImage | None = None
    mask: InputImage | None = None
    plan: devices.DevicePlan | None = None  # filled in once the request passed its checks
    source: str = ""  # what the loader gets (an operator's folder made absolute); "" = model


class LocalDiffusers:
    id = "local"
    label = "Local diffusers"

    def __init__(
        self,
        model: str = "stabilityai/sd-turbo",
        device: str = "auto",
        lora_dir: Path | None = None,
        runner: JobRunner | None = None,
        cache: PipelineCache | None = None,
        models_dir: Path | None = None,
    ) -> None:
        self.default_model = model
        self.device = device
        self.lora_dir = lora_dir
        self.sources = ModelSources((model,), models_dir)
        self.runner: JobRunner = runner or JobQueue()
        self.cache = cache or PipelineCache()
        self._plan: devices.DevicePlan | None = None

    def capabilities(self, model: str | None = None) -> Capabilities:
        if model:
            self.sources.check(model)  # a path outside the rules is refused, unread
        d = defaults_for(model or self.default_model)
        return Capabilities(
            sizes=d.sizes,
            size_range=SIZE_RANGE,
            max_n=MAX_N,
            seed=True,
            edit="img2img",
            max_input_images=1,
            mask=True,
            negative_prompt=True,
            steps=True,
            max_steps=d.max_steps,
            guidance=True,
            strength=True,
            schedulers=tuple(name for name in SCHEDULERS if name != "lms" or _installed("scipy")),
            lora=_installed("peft"),
        )

    def suggested_models(self) -> list[str]:
        return list(dict.fromkeys([self.default_model, *SUGGESTED_MODELS]))

    def model_source(self, model: str) -> str:
        """What the loader gets for `model`; InvalidInput if a user may not name it."""
        return self.sources.source(model)

    async def generate(
        self, request: ImageRequest, progress: Progress | None = None
    ) -> ImageResult:
        model = request.model or self.default_model
        source = self.model_source(model)
        if request.images and not request.size:
            request = replace(request, size=_size_for_input(request.images[0], model))
        request = check_request(self, request)
        spec, applied = self._resolve(request)  # refuse before importing torch, if at all
        plan = await self._device_plan()
        spec = replace(spec, plan=plan, source=source)
        progress = progress or Progress()
        images = await self.runner.run(
            plan.device, functools.partial(render, spec, self.cache), progress
        )
        plan = job_runners.plan_used(self.runner, plan)
        d = defaults_for(spec.model)
        parameters: dict[str, Any] = {
            "task": spec.task,
            "size": f"{spec.width}x{spec.height}",
            "steps": spec.steps,
            "guidance": spec.guidance,
            "strength": spec.strength,
            "scheduler": spec.scheduler or "model default",
            "negative_prompt": spec.negative_prompt,
            "loras": [asdict(lora) for lora in spec.loras],
            "seeds": list(spec.seeds),
            "device": plan.device,
            "dtype": plan.dtype,
            "model_defaults": {"family": d.family, "applied": applied},
        }
        if request.images:
            parameters["input_images"] = 1
            parameters["mask"] = request.mask is not None
        return ImageResult(
            images=images,
            backend=self.id,
            model=spec.model,
            prompt_sent=spec.prompt,
            parameters=parameters,
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

    def _resolve(self, request: ImageRequest) -> tuple[RenderSpec, dict[str, Any]]:
        """Fill the model's defaults, and refuse what would fail or be silently ignored."""
        model = request.model or self.default_model
        d = defaults_for(model)
        task: Task = "inpaint" if request.mask else "img2img" if request.images else "text2img"
        applied: dict[str, Any] = {}
        if request.steps is None:
            applied["steps"] = (d.img2img_steps or d.steps) if task == "img2img" else d.steps
        if request.guidance is None:
            applied["guidance"] = d.guidance
        strength = request.strength
        if task != "text2img" and strength is None:
            strength = applied["strength"] = d.strength if task == "img2img" else d.inpaint_strength
        if task == "text2img" and request.strength is not None:
            raise InvalidInput("A strength applies only when editing an input image.")
        steps = request.steps or applied["steps"]
        guidance = request.guidance if request.guidance is not None else applied["guidance"]
        if request.negative_prompt and guidance <= 1:
            raise InvalidInput(
                f"A negative prompt has no effect with guidance {guidance:g} (it needs guidance "
                f"above 1; {model}'s default is {d.guidance:g}). Set a guidance such as 5, "
                "or leave out the negative prompt."
            )
        if strength is not None and int(steps * strength) < 1:
            raise InvalidInput(
                f"With strength {strength:g}, {steps} step(s) change nothing (steps x strength "
                f"must reach 1). Ask for at least {math.ceil(1 / strength)} steps or a higher "
                "strength."
            )
        width, height = request.width_height or (0, 0)
        spec = RenderSpec(
            model=model,
            task=task,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=width,
            height=height,
            steps=steps,
            guidance=guidance,
            strength=strength,
            scheduler=request.scheduler,
            seeds=_seeds(request.seed, request.n),
            loras=_check_loras(request.loras, self.lora_dir),
            lora_dir=self.lora_dir,
            image=request.images[0] if request.images else None,
            mask=request.mask,
        )
        return spec, applied


def _seeds(seed: int | None, n: int) -> tuple[int, ...]:
    first = secrets.randbelow(2**32) if seed is None else seed
    return tuple(first + i for i in range(n))


def _size_for_input(image: InputImage, model: str) -> str:
    """The input's aspect ratio at the model's native pixel count, in multiples of 8.

    SD-class models draw well only near the size they were trained at, so a 4000x3000
    photo is re-rendered at about 590x440 for SD 1.x rather than at its own size.
    """
    native_w, native_h = (int(side) for side in defaults_for(model).sizes[0].split("x"))
    scale = math.sqrt(native_w * native_h / max(1, image.width * image.height))

    def side(length: int) -> int:
        return min(SIZE_RANGE.max_side, max(SIZE_RANGE.min_side, round(length * scale / 8) * 8))

    return f"{side(image.width)}x{side(image.height)}"


def available_loras(lora_dir: Path | None) -> list[str]:
    if lora_dir is None or not lora_dir.is_dir():
        return []
    return sorted(path.stem for path in lora_dir.glob("*.safetensors") if path.is_file())


def _check_loras(loras: tuple[LoraSpec, ...], lora_dir: Path | None) -> tuple[LoraSpec, ...]:
    names = [lora.name for lora in loras]
    if len(set(names)) != len(names):
        raise InvalidInput("Each LoRA can be given once; combine the weights instead.")
    for lora in loras:
        name = lora.name
        if not name or "/" in name or "\\" in name or ".." in name or name.startswith("."):
            raise InvalidInput(
                f"{name!r} is not a LoRA name: give the file name without folder or "
                ".safetensors, e.g. 'pixel-art'."
            )
        if not math.isfinite(lora.weight):
            raise InvalidInput(f"The weight of LoRA {name!r} must be a number.")
        if lora_dir is None or not (lora_dir / f"{name}.safetensors").is_file():
            # Neither the folder nor its other files: they may be other users' LoRAs.
            raise InvalidInput(f"There is no LoRA named {name!r}. `/loras` lists yours.")
    return loras


# --- The job: runs in a device worker thread ------------------------------------------


def render(spec: RenderSpec, cache: PipelineCache, progress: Progress) -> list[GeneratedImage]:
    """Load (or reuse) the pipeline, apply scheduler and LoRAs, denoise, encode PNGs.

    Images are denoised one call each rather than as one batch: batched maths differs in
    the last bits, and an exact re-run of image 3 from its recorded seed is worth more
    than the little a batch saves.
    """
    plan = spec.plan
    assert plan is not None, "generate() sets the device plan"
    source = spec.source or spec.model
    if not cache.is_loaded(source, plan):
        progress.report(0, 0, f"loading {spec.model}")
    pipe = cache.get(source, plan, spec.task)
    if progress.cancelled:
        raise JobCancelled("stopped by the user before denoising")
    arguments = _call_arguments(spec)
    original_scheduler = pipe.scheduler
    images = []
    try:
        if spec.scheduler:
            pipe.scheduler = _scheduler(spec.scheduler, original_scheduler)
        if spec.loras:
            _load_loras(pipe, spec)
        for index, seed in enumerate(spec.seeds):
            output = pipe(
                **arguments,
                generator=devices.seeded_generators([seed])[0],
                callback_on_step_end=_step_callback(spec, index, progress),
            )
            if progress.cancelled:
                raise JobCancelled("stopped by the user")
            if any(getattr(output, "nsfw_content_detected", None) or []):
                raise ContentRefused(
                    f"The safety checker of {spec.model} flagged image {index + 1} of "
                    f"{len(spec.seeds)}, so nothing was kept. Rephrase the prompt and try again."
                )
            images.append(_png(output.images[0], seed))
    finally:
        pipe.scheduler = original_scheduler
        pipe._interrupt = False
        if spec.loras:
            pipe.unload_lora_weights()
    return images


def _step_callback(spec: RenderSpec, index: int, progress: Progress) -> Any:
    """Report overall progress across the request's images, with a preview of the latent
    now and then while someone watches; interrupt when stopped."""
    count = len(spec.seeds)
    last_preview = -math.inf

    def on_step_end(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> dict:
        nonlocal last_preview
        per_image = getattr(pipe, "_num_timesteps", None) or spec.steps
        note = f"image {index + 1} of {count}" if count > 1 else "denoising"
        preview = None
        now = time.monotonic()
        # Not after the last step: the image itself comes next.
        if progress.watched and step + 1 < per_image and now - last_preview >= PREVIEW_EVERY_S:
            factors = latent_preview.factors_for(pipe)
            if factors is not None:
                size = (spec.width, spec.height)
                preview = latent_preview.preview_of(kwargs.get("latents"), factors, size)
                last_preview = now
        progress.report(index * per_image + step + 1, count * per_image, note, preview=preview)
        if progress.cancelled:
            pipe._interrupt = True
        return kwargs

    return on_step_end


def _scheduler(name: str, current: Any) -> Any:
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(current.config, **overrides)


def _load_loras(pipe: Any, spec: RenderSpec) -> None:
    names = [lora.name for lora in spec.loras]
    try:
        for name in names:
            pipe.load_lora_weights(
                str(spec.lora_dir), weight_name=f"{name}.safetensors", adapter_name=name
            )
        pipe.set_adapters(names, adapter_weights=[lora.weight for lora in spec.loras])
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        reason = reason.replace(str(spec.lora_dir), "the LoRA folder")  # no server paths
        raise InvalidInput(
            f"The LoRA(s) {', '.join(names)} could not be applied to {spec.model} "
            f"(was it trained for this model?): {reason}"
        ) from exc


def _call_arguments(spec: RenderSpec) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "num_inference_steps": spec.steps,
        "guidance_scale": spec.guidance,
        "output_type": "pil",
    }
    size = (spec.width, spec.height)
    if spec.task == "text2img":
        arguments.update(width=spec.width, height=spec.height)
        return arguments
    assert spec.image is not None
    arguments.update(image=_decode(spec.image, "RGB").resize(size), strength=spec.strength)
    if spec.task == "inpaint":
        assert spec.mask is not None
        arguments.update(
            mask_image=_mask(spec.mask).resize(size), width=spec.width, height=spec.height
        )
    return arguments


def _decode(image: InputImage, mode: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image.data)) as opened:
            return opened.convert(mode) if opened.mode != mode else opened.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidInput(f"The input image ({image.mime}) could not be read.") from exc


def _mask(mask: InputImage) -> Any:
    """White = repaint; or, for a mask with transparency, transparent = repaint."""
    from PIL import ImageOps

    rgba = _decode(mask, "RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] < 255:
        return ImageOps.invert(alpha)
    return rgba.convert("L")


def _png(image: Any, seed: int) -> GeneratedImage:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return GeneratedImage(
        data=buffer.getvalue(), mime="image/png", width=image.width, height=image.height, seed=seed
    )


def create_backend(settings: BackendSettings) -> LocalDiffusers | None:
    """None when turned off or when the local extra (torch, diffusers) is not installed
    here; with a broker (ATELIER_BROKER_URL) the workers need it, this process does not."""
    if not settings.local_enabled:
        return None
    remote = bool(job_runners.broker_url_of(settings))
    if not remote and not (_installed("torch") and _installed("diffusers")):
        return None
    return LocalDiffusers(
        model=settings.local_model,
        device=settings.local_device,
        lora_dir=settings.resolved_lora_dir,
        runner=job_runners.runner_for(settings),
        models_dir=settings.local_models_dir,
    )
