"""Train a LoRA on this machine: the diffusers text-to-image LoRA recipe, as a device job.

The maths is the recipe of diffusers' `train_text_to_image_lora.py`: frozen VAE, text
encoder and UNet; a peft LoRA on the UNet's attention projections (to_q/k/v/out.0);
each step encodes images to latents, adds noise at random timesteps, has the UNet
predict the noise (or the velocity, for v-prediction models) and takes AdamW on the
MSE. Two things differ, neither changing the result:

- The frozen parts' outputs are computed once, not every step: the VAE's latent
  distribution (mean and std; a latent is still *sampled* from it each step, as
  `latent_dist.sample()` does) and the caption embeddings. This is where the speed over
  the plain loop comes from (see benchmarks/lora_training_speed.py).
- All randomness (LoRA init, image order, latent samples, noise, timesteps) comes from
  one CPU generator seeded by `seed`, so a seed gives the same run on every device, and a
  resumed run continues exactly where the stopped one was (the generator's state is in
  every checkpoint), never touching torch's global generator that other jobs share.

Precision: float32 on CPU and Apple GPUs; on CUDA the frozen weights are loaded in
bfloat16 (float16 where the card lacks it, with a gradient scaler) under autocast, and
the LoRA weights and optimizer stay float32, as in the recipe.

Where it runs: on the same `JobQueue` lane as local image generation for the device, so
the GPU never holds a training and a generation at once (two pipelines on one GPU only
share its memory and time, and can run out of memory). A generation asked for meanwhile
waits ("waiting: 1 ahead"); hosted backends are not affected. The awaiting coroutine is
meant to be a background task: the chat goes on while it runs.

Stopping: the job checks `progress.cancelled` before every step, writes a checkpoint of
the last finished step, and raises `JobCancelled` (the caller sees CancelledError). A
stopped or crashed run is continued with `resume=True` from its newest checkpoint. The
finished LoRA is `<lora dir>/<name>.safetensors`, written last, so it can be used by name
(`LoraSpec(name)`) the moment `train` returns; see lora_formats for the whole layout.

torch, diffusers and peft are imported only inside the job.

Length: the training loop, its checkpointing and its resume check read and write the
same state (generator, optimizer, LoRA weights) and are only correct together, so they
stay one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInput
from pipelines import devices, job_runners
from pipelines.backend_settings import BackendSettings
from pipelines.images.pipeline_cache import load_text2img
from pipelines.job_queue import JobCancelled, JobQueue, JobRunner
from pipelines.progress import Listener, Progress
from pipelines.training import lora_checkpoints
from pipelines.training.lora_dataset import PreparedDataset
from pipelines.training.lora_formats import LoraLayout, LoraMetadata, save_lora

if TYPE_CHECKING:
    from pipelines.images.registry import BackendRegistry

TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
PROBE_SEED_OFFSET = 7919  # the probe's noise must not be the training's first draws


@dataclass(frozen=True)
class TrainingParams:
    """How to train. Defaults suit a style or subject LoRA for SD 1.5 on a GPU."""

    steps: int = 1000
    rank: int = 16
    alpha: float | None = None  # None: the rank (a scale of 1)
    learning_rate: float = 1e-4
    batch_size: int = 1
    seed: int = 0
    sample_every: int = 0  # 0: no samples during training
    sample_prompt: str | None = None  # None: the first image's caption
    sample_steps: int = 20
    sample_guidance: float = 7.5
    checkpoint_every: int = 100  # 0: only when stopped
    keep_checkpoints: int = 2
    gradient_checkpointing: bool = False
    mixed_precision: bool = True  # used only where the device has it (CUDA)
    probe_pairs: int = 8
    target_modules: tuple[str, ...] = TARGET_MODULES

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


@dataclass(frozen=True)
class LocalTrainingRequest:
    """Train `name` on `dataset` (prepared into LoraLayout(lora_dir, name).folder)."""

    name: str
    base_model: str
    dataset: PreparedDataset
    params: TrainingParams = TrainingParams()
    resume: bool = False


@dataclass(frozen=True)
class LoraTrainingResult:
    """A finished local training; `name` is usable as `LoraSpec(name)` at once."""

    name: str
    lora_file: Path  # diffusers format, where local_diffusers looks it up
    kohya_file: Path
    manifest: Path
    record: Path  # training.json
    metadata: LoraMetadata
    resumed_from: int | None
    losses: tuple[tuple[int, float], ...]  # (step, loss) every step: the chart
    probe_losses: tuple[tuple[int, float], ...]  # fixed-noise loss: the honest trend
    samples: tuple[tuple[int, Path], ...]
    device: str
    dtype: str
    timings: dict[str, float] = field(default_factory=dict)  # load_s, prepare_s, train_s


class TrainingProgress(Progress):
    """A `Progress` that also keeps what a loss chart and a sample gallery show.

    The job appends from its worker thread; the chat reads copies at any time (for
    example from the progress listener, which runs on the event loop).
    """

    def __init__(self, listener: Listener | None = None) -> None:
        super().__init__(listener)
        self._records = threading.Lock()
        self._losses: list[tuple[int, float]] = []
        self._probes: list[tuple[int, float]] = []
        self._samples: list[tuple[int, Path]] = []

    @property
    def losses(self) -> tuple[tuple[int, float], ...]:
        with self._records:
            return tuple(self._losses)

    @property
    def probe_losses(self) -> tuple[tuple[int, float], ...]:
        with self._records:
            return tuple(self._probes)

    @property
    def samples(self) -> tuple[tuple[int, Path], ...]:
        with self._records:
            return tuple(self._samples)

    def record(self, kind: str, step: int, value: Any) -> None:
        with self._records:
            {"loss": self._losses, "probe": self._probes, "sample": self._samples}[kind].append(
                (step, value)
            )


class LocalLoraTrainer:
    """Trains LoRAs into `lora_dir` on one device, through a `JobRunner`.

    Pass the local backend's runner (`LocalLoraTrainer(backend.runner, backend.device,
    backend.lora_dir)`) so that training and generation queue for the device together.
    """

    id = "local"

    def __init__(
        self,
        runner: JobRunner | None = None,
        device: str = "auto",
        lora_dir: Path | None = None,
        default_model: str = "",
    ) -> None:
        self.runner: JobRunner = runner or JobQueue()
        self.device = device
        self.lora_dir = lora_dir
        self.default_model = default_model  # the base model a training uses unless named

    @classmethod
    def beside(cls, local: Any) -> LocalLoraTrainer:
        """A trainer on the local image backend's device, queue, LoRA folder and model."""
        return cls(
            getattr(local, "runner", None),
            getattr(local, "device", "auto"),
            local.lora_dir,
            local.default_model,
        )

    def checkpoint_step(self, name: str) -> int | None:
        """Where `resume=True` would continue `name` from; None when it cannot."""
        if self.lora_dir is None:
            return None
        return lora_checkpoints.latest_step(LoraLayout(self.lora_dir, name).checkpoints)

    async def train(
        self, request: LocalTrainingRequest, progress: Progress | None = None
    ) -> LoraTrainingResult:
        """Run the training job; raises CancelledError when stopped (checkpoint kept)."""
        layout = self._check(request)  # refuse before importing torch, if at all
        if job_runners.plans_on_worker(self.runner):
            plan = job_runners.planned_here(self.device)  # the worker plans it (job_codec)
        else:
            plan = training_plan(await asyncio.to_thread(devices.plan, self.device), request.params)
        job = TrainingJob(
            layout=layout,
            base_model=request.base_model,
            dataset=request.dataset,
            params=request.params,
            plan=plan,
            resume=request.resume,
        )
        progress = progress or TrainingProgress()
        return await self.runner.run(plan.device, functools.partial(run_training, job), progress)

    def _check(self, request: LocalTrainingRequest) -> LoraLayout:
        if self.lora_dir is None:
            raise InvalidInput("No LoRA folder is configured (set ATELIER_LORA_DIR).")
        layout = LoraLayout(self.lora_dir, request.name)
        if request.dataset.folder.resolve() != layout.folder.resolve():
            raise ValueError(
                f"prepare the dataset into {layout.folder} (LoraLayout.folder), so its "
                f"manifest stays next to the LoRA; it is in {request.dataset.folder}"
            )
        check_params(request.params, len(request.dataset.images))
        if layout.weights.exists():
            raise InvalidInput(f"The LoRA {request.name!r} is already trained ({layout.weights}).")
        step = lora_checkpoints.latest_step(layout.checkpoints)
        if request.resume and step is None:
            raise InvalidInput(f"There is no stopped training of {request.name!r} to resume.")
        if not request.resume and step is not None:
            raise InvalidInput(
                f"A training of {request.name!r} was stopped at step {step}; resume it "
                "(resume=True) or choose another name."
            )
        if request.resume and step is not None and request.params.steps <= step:
            raise InvalidInput(
                f"The stopped training of {request.name!r} is already at step {step}; ask for "
                f"more than {step} steps to continue it."
            )
        return layout


def check_params(params: TrainingParams, image_count: int) -> None:
    """Refuse settings that would fail or quietly do something else, naming the setting."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise InvalidInput(message)

    need(1 <= params.steps <= 100_000, f"steps must be 1 to 100000; {params.steps} was asked.")
    need(1 <= params.rank <= 256, f"rank must be 1 to 256; {params.rank} was asked.")
    need(
        params.alpha is None or (math.isfinite(params.alpha) and params.alpha > 0),
        f"alpha must be a positive number; {params.alpha} was asked.",
    )
    need(
        math.isfinite(params.learning_rate) and 0 < params.learning_rate <= 1,
        f"learning_rate must be above 0 and at most 1 (1e-4 is usual); "
        f"{params.learning_rate} was asked.",
    )
    need(
        1 <= params.batch_size <= min(64, image_count),
        f"batch_size must be 1 to {min(64, image_count)} (no more than the {image_count} "
        f"images); {params.batch_size} was asked.",
    )
    need(0 <= params.seed < 2**63, f"seed must be 0 to 2**63-1; {params.seed} was asked.")
    need(params.sample_every >= 0, "sample_every must be 0 (never) or a number of steps.")
    need(params.checkpoint_every >= 0, "checkpoint_every must be 0 (only on stop) or steps.")
    need(1 <= params.sample_steps <= 150, "sample_steps must be 1 to 150.")
    need(params.keep_checkpoints >= 1, "keep_checkpoints must be at least 1.")
    need(params.probe_pairs >= 1, "probe_pairs must be at least 1.")
    need(bool(params.target_modules), "target_modules must name at least one module.")


def training_plan(plan: devices.DevicePlan, params: TrainingParams) -> devices.DevicePlan:
    """Mixed precision only on CUDA: elsewhere half precision trains slowly or unstably."""
    if plan.device.startswith("cuda") and params.mixed_precision:
        return plan
    return devices.DevicePlan(plan.device, "float32")


# --- The job: runs in a device worker thread ------------------------------------------


@dataclass(frozen=True)
class TrainingJob:
    """Everything the worker needs, as plain data (picklable for out-of-process runners)."""

    layout: LoraLayout
    base_model: str
    dataset: PreparedDataset
    params: TrainingParams
    plan: devices.DevicePlan
    resume: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the stopped one to be the same run."""
        p = self.params
        return {
            "base_model": self.base_model,
            "dataset_hash": self.dataset.dataset_hash,
            "resolution": self.dataset.resolution,
            "rank": p.rank,
            "alpha": p.lora_alpha,
            "learning_rate": p.learning_rate,
            "batch_size": p.batch_size,
            "seed": p.seed,
            "target_modules": list(p.target_modules),
            "dtype": self.plan.dtype,
        }


@dataclass
class _Run:
    """The live training state of one job."""

    job: TrainingJob
    pipe: Any
    generator: Any
    latent_mean: Any
    latent_std: Any
    embeddings: Any
    scheduler: Any
    optimizer: Any
    scaler: Any
    autocast: Callable[[], Any]
    order: list[int] = field(default_factory=list)
    position: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    probes: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[int, str]] = field(default_factory=list)

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    def next_batch(self) -> list[int]:
        """Indices for one batch: every image once per epoch, in a freshly drawn order."""
        import torch

        batch: list[int] = []
        while len(batch) < self.job.params.batch_size:
            if self.position >= len(self.order):
                count = len(self.job.dataset.images)
                self.order = torch.randperm(count, generator=self.generator).tolist()
                self.position = 0
            batch.append(self.order[self.position])
            self.position += 1
        return batch


def run_training(job: TrainingJob, progress: Progress) -> LoraTrainingResult:
    """Load, prepare, (resume,) train, sample, checkpoint, save. Blocking."""
    try:
        return _run_training(job, progress)
    finally:
        # The private model copy is garbage once the job ends; give its memory back now.
        devices.free_accelerator_memory(job.plan.device)


def _run_training(job: TrainingJob, progress: Progress) -> LoraTrainingResult:
    started = time.perf_counter()
    params, layout = job.params, job.layout
    # 1. A private copy of the model: the adapter must never reach the generation cache.
    progress.report(0, params.steps, f"loading {job.base_model}")
    pipe = load_text2img(job.base_model, job.plan)
    _check_pipeline(pipe, job.base_model)
    loaded = time.perf_counter()
    _stop_if_cancelled(progress, None, 0)
    # 2. The adapter, the frozen parts' outputs, the optimizer.
    progress.report(0, params.steps, f"encoding {len(job.dataset.images)} images")
    run = _prepare(job, pipe)
    start = 0
    if job.resume:
        start = _restore(run, layout)
        progress.report(start, params.steps, f"resuming from step {start}")
    else:
        run.probes.append((0, _probe_loss(run)))
    _replay(progress, run)
    prepared = time.perf_counter()
    # 3. Train.
    for step in range(start + 1, params.steps + 1):
        _stop_if_cancelled(progress, run, step - 1)
        loss = _train_step(run)
        run.losses.append((step, loss))
        _record(progress, "loss", step, loss)
        progress.report(step, params.steps, f"step {step}/{params.steps} · loss {loss:.4f}")
        if params.sample_every and step % params.sample_every == 0:
            path = _sample(run, step)
            run.samples.append((step, str(path)))
            _record(progress, "sample", step, path)
        if params.checkpoint_every and step % params.checkpoint_every == 0 and step < params.steps:
            _checkpoint(run, step)
    probe = _probe_loss(run)
    run.probes.append((params.steps, probe))
    _record(progress, "probe", params.steps, probe)
    trained = time.perf_counter()
    # 4. Save: the kohya copy and the record first, the file the backend loads last.
    progress.report(params.steps, params.steps, "saving")
    timings = {
        "load_s": loaded - started,
        "prepare_s": prepared - loaded,
        "train_s": trained - prepared,
    }
    result = _save(run, timings, resumed_from=start if job.resume else None)
    shutil.rmtree(layout.checkpoints, ignore_errors=True)
    return result


def _check_pipeline(pipe: Any, model: str) -> None:
    if type(pipe).__name__ != "StableDiffusionPipeline":
        raise InvalidInput(
            f"LoRA training here supports Stable Diffusion 1.x/2.x models; {model} loads as "
            f"{type(pipe).__name__}. Train it on Replicate instead, or pick an SD 1.5 model."
        )


def _prepare(job: TrainingJob, pipe: Any) -> _Run:
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    params, plan = job.params, job.plan
    generator = torch.Generator("cpu").manual_seed(params.seed)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.requires_grad_(False)
    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(
            r=params.rank,
            lora_alpha=params.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(params.target_modules),
        )
    )
    with torch.no_grad():
        # peft's "gaussian" init (A ~ N(0, 1/r), B = 0), drawn from the job's generator
        # instead of torch's global one, so the seed alone decides the run.
        for name, param in unet.named_parameters():
            if "lora_A" in name:
                draw = torch.randn(param.shape, generator=generator) / params.rank
                param.copy_(draw.to(param.device, param.dtype))
    cast_training_params(unet, dtype=torch.float32)
    if params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    use_amp = plan.device.startswith("cuda") and plan.dtype != "float32"

    def autocast() -> Any:
        if use_amp:
            return torch.autocast("cuda", dtype=plan.torch_dtype)
        return contextlib.nullcontext()

    mean, std = _encode_images(job, pipe, autocast)
    embeddings = _encode_captions(job, pipe, autocast)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=params.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
    )
    scaler = torch.amp.GradScaler("cuda") if use_amp and plan.dtype == "float16" else None
    return _Run(
        job=job,
        pipe=pipe,
        generator=generator,
        latent_mean=mean,
        latent_std=std,
        embeddings=embeddings,
        scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
        optimizer=optimizer,
        scaler=scaler,
        autocast=autocast,
    )


def _encode_images(job: TrainingJob, pipe: Any, autocast: Callable[[], Any]) -> tuple[Any, Any]:
    """The VAE's latent distribution (mean, std) of every image, float32, on the device."""
    import numpy as np
    import torch
    from PIL import Image

    means, stds = [], []
    vae = pipe.vae
    for path in job.dataset.image_paths():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad(), autocast():
            dist = vae.encode(tensor.to(vae.device, vae.dtype)).latent_dist
        means.append(dist.mean.float())
        stds.append(dist.std.float())
    return torch.cat(means), torch.cat(stds)


def _encode_captions(job: TrainingJob, pipe: Any, autocast: Callable[[], Any]) -> Any:
    import torch

    tokens = pipe.tokenizer(
        job.dataset.captions(),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad(), autocast():
        hidden = pipe.text_encoder(tokens.to(pipe.text_encoder.device), return_dict=False)[0]
    return hidden.float()


def _noisy(run: _Run, latents: Any, noise: Any, timesteps: Any) -> tuple[Any, Any]:
    """The UNet's input and its target, as the scheduler's prediction type says."""
    scheduler = run.scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noisy, noise
    if kind == "v_prediction":
        return noisy, scheduler.get_velocity(latents, noise, timesteps)
    raise InvalidInput(f"Training a LoRA for a {kind!r}-prediction model is not supported.")


def _train_step(run: _Run) -> float:
    import torch
    import torch.nn.functional as F

    unet, device = run.unet, run.latent_mean.device
    indices = torch.tensor(run.next_batch())
    mean, std = run.latent_mean[indices], run.latent_std[indices]
    sample = torch.randn(mean.shape, generator=run.generator).to(device)
    latents = (mean + std * sample) * run.pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=run.generator).to(device)
    count = run.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, count, (len(indices),), generator=run.generator).to(device)
    noisy, target = _noisy(run, latents, noise, timesteps)
    with run.autocast():
        prediction = unet(noisy, timesteps, run.embeddings[indices], return_dict=False)[0]
    loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach().item())
    if not math.isfinite(value):
        raise InvalidInput(
            f"The loss became {value} at step {len(run.losses) + 1}: training diverged. "
            f"Try a lower learning_rate than {run.job.params.learning_rate:g}."
        )
    return value


def _probe_loss(run: _Run) -> float:
    """The loss over a fixed set of (image, noise, timestep) triples, without sampling.

    The per-step loss jumps with each random timestep, too noisy to say whether
    training helps; on a fixed set the trend is real (lower means it fits the images).
    """
    import torch
    import torch.nn.functional as F

    params = run.job.params
    generator = torch.Generator("cpu").manual_seed(params.seed + PROBE_SEED_OFFSET)
    count, device = len(run.job.dataset.images), run.latent_mean.device
    indices = torch.arange(params.probe_pairs) % count
    latents = run.latent_mean[indices] * run.pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator).to(device)
    train_steps = run.scheduler.config.num_train_timesteps
    timesteps = torch.linspace(0.05, 0.95, params.probe_pairs) * train_steps
    noisy, target = _noisy(run, latents, noise, timesteps.long().to(device))
    with torch.no_grad(), run.autocast():
        prediction = run.unet(
            noisy, timesteps.long().to(device), run.embeddings[indices], return_dict=False
        )[0]
    return float(F.mse_loss(prediction.float(), target.float()).item())


def _sample(run: _Run, step: int) -> Path:
    """One image with the weights as they are now, same prompt and seed every time."""
    from pipelines.devices import seeded_generators

    params, dataset = run.job.params, run.job.dataset
    run.unet.eval()
    try:
        with run.autocast():
            image = run.pipe(
                prompt=params.sample_prompt or dataset.captions()[0],
                num_inference_steps=params.sample_steps,
                guidance_scale=params.sample_guidance,
                width=dataset.resolution,
                height=dataset.resolution,
                generator=seeded_generators([params.seed])[0],
                output_type="pil",
            ).images[0]
    finally:
        run.unet.train()
    folder = run.job.layout.samples
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:06d}.png"
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)
    return path


def _stop_if_cancelled(progress: Progress, run: _Run | None, done: int) -> None:
    """Between steps: on a stop, keep the finished steps in a checkpoint, then stop."""
    if not progress.cancelled:
        return
    if run is not None and done > 0:
        _checkpoint(run, done)
        raise JobCancelled(f"stopped by the user at step {done}; resumable from there")
    raise JobCancelled("stopped by the user before training started")


def _checkpoint(run: _Run, step: int) -> Path:
    from peft.utils import get_peft_model_state_dict

    rng = {"generator": run.generator.get_state()}
    optimizer: dict[str, Any] = {"optimizer": run.optimizer.state_dict()}
    if run.scaler is not None:
        optimizer["scaler"] = run.scaler.state_dict()
    state = {
        "fingerprint": run.job.fingerprint(),
        "order": run.order,
        "position": run.position,
        "losses": run.losses,
        "probes": run.probes,
        "samples": run.samples,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return lora_checkpoints.save(
        run.job.layout.checkpoints,
        step,
        get_peft_model_state_dict(run.unet),
        optimizer,
        rng,
        state,
        keep=run.job.params.keep_checkpoints,
    )


def _restore(run: _Run, layout: LoraLayout) -> int:
    """Load the newest checkpoint into the run; the step it was taken after."""
    from peft.utils import set_peft_model_state_dict

    checkpoint = lora_checkpoints.load(layout.checkpoints)
    saved, now = checkpoint.state.get("fingerprint", {}), run.job.fingerprint()
    changed = [
        f"{key} (was {saved.get(key)!r}, now {now[key]!r})"
        for key in now
        if saved.get(key) != now[key]
    ]
    if changed:
        raise InvalidInput(
            f"The stopped training of {layout.name!r} used other settings: "
            f"{'; '.join(changed)}. Resume with the same settings, or start over."
        )
    device = run.latent_mean.device
    adapter = {key: value.to(device) for key, value in checkpoint.adapter.items()}
    outcome = set_peft_model_state_dict(run.unet, adapter)
    if getattr(outcome, "unexpected_keys", None):
        raise InvalidInput(f"The checkpoint at step {checkpoint.step} does not fit this model.")
    run.optimizer.load_state_dict(checkpoint.optimizer["optimizer"])
    if run.scaler is not None and "scaler" in checkpoint.optimizer:
        run.scaler.load_state_dict(checkpoint.optimizer["scaler"])
    run.generator.set_state(checkpoint.rng["generator"])
    run.order = list(checkpoint.state["order"])
    run.position = int(checkpoint.state["position"])
    run.losses = [(int(s), float(v)) for s, v in checkpoint.state["losses"]]
    run.probes = [(int(s), float(v)) for s, v in checkpoint.state["probes"]]
    run.samples = [(int(s), str(p)) for s, p in checkpoint.state["samples"]]
    return checkpoint.step


def _replay(progress: Progress, run: _Run) -> None:
    """Fill a fresh TrainingProgress with what a resumed run had already recorded."""
    for step, loss in run.losses:
        _record(progress, "loss", step, loss)
    for step, loss in run.probes:
        _record(progress, "probe", step, loss)
    for step, path in run.samples:
        _record(progress, "sample", step, Path(path))


def _record(progress: Progress, kind: str, step: int, value: Any) -> None:
    if isinstance(progress, TrainingProgress):
        progress.record(kind, step, value)


def _save(run: _Run, timings: dict[str, float], resumed_from: int | None) -> LoraTrainingResult:
    from peft.utils import get_peft_model_state_dict

    job, layout = run.job, run.job.layout
    params = job.params
    metadata = LoraMetadata(
        base_model=job.base_model,
        rank=params.rank,
        alpha=params.lora_alpha,
        trigger_word=job.dataset.trigger_word,
        steps=params.steps,
        dataset_hash=job.dataset.dataset_hash,
        resolution=job.dataset.resolution,
        target_modules=tuple(params.target_modules),
        name=layout.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    state = get_peft_model_state_dict(run.unet)
    save_lora(layout.kohya_weights, state, metadata, "kohya")
    record = {
        "metadata": asdict(metadata),
        "params": asdict(params),
        "device": job.plan.device,
        "dtype": job.plan.dtype,
        "resumed_from": resumed_from,
        "losses": run.losses,
        "probe_losses": run.probes,
        "samples": run.samples,
        "timings": timings,
    }
    partial = layout.training_record.with_name(".training.json.partial")
    partial.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(partial, layout.training_record)
    save_lora(layout.weights, state, metadata, "diffusers")
    return LoraTrainingResult(
        name=layout.name,
        lora_file=layout.weights,
        kohya_file=layout.kohya_weights,
        manifest=layout.manifest,
        record=layout.training_record,
        metadata=metadata,
        resumed_from=resumed_from,
        losses=tuple(run.losses),
        probe_losses=tuple(run.probes),
        samples=tuple((step, Path(path)) for step, path in run.samples),
        device=job.plan.device,
        dtype=job.plan.dtype,
        timings=timings,
    )


def create_training_backend(
    settings: BackendSettings, images: BackendRegistry | None = None
) -> LocalLoraTrainer | None:
    """Trains on the local image backend's device and queue; None without that backend."""
    local = next((b for b in images.available() if b.id == "local"), None) if images else None
    if local is None or getattr(local, "lora_dir", None) is None:
        return None
    return LocalLoraTrainer.beside(local)
