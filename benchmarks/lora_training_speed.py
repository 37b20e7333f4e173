"""LoRA training speed: our trainer against the plain diffusers-recipe loop, same model.

(a) Tiny model (default): the tiny random-weight SD of the tests, built into a temporary
    folder. Our trainer (`LocalLoraTrainer.train`, through the job queue, with progress,
    its fixed-noise probe, no samples and no checkpoints) against a loop written here
    the way diffusers' `train_text_to_image_lora.py` is: every step VAE-encodes the
    batch, samples the latent, adds noise, runs the text encoder and the UNet, MSE,
    AdamW. Same images, captions, rank, learning rate, batch and steps; both run in the
    same worker thread, interleaved `--runs` times, compared by the median steps/s
    (model loading excluded from both; adapter and optimizer setup included in both).
    The plain loop gets its images already decoded and tokenized (no DataLoader), which
    flatters it. Target: ours / plain >= 1.0. Ours caches the frozen VAE's latent
    distribution and the caption embeddings, which the recipe recomputes every step.

(b) --full-size: SD 1.5's architecture (UNet, VAE, CLIP text encoder; ~1.07 B parameters)
    with random weights at 512x512, batch 1: steps/s and peak GPU memory of our trainer
    with and without gradient checkpointing. On a GPU speed does not depend on the
    weights' values. Needs CUDA; on a CPU it prints a skip.

    .venv/bin/python benchmarks/lora_training_speed.py [--steps 60 --runs 3 --size 32]
    .venv/bin/python benchmarks/lora_training_speed.py --full-size [--steps 30]

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from PIL import Image, ImageDraw  # noqa: E402

from pipelines.job_queue import JobQueue  # noqa: E402
from pipelines.progress import Progress  # noqa: E402
from pipelines.training.lora_dataset import DatasetImage, PreparedDataset, prepare_dataset  # noqa: E402
from pipelines.training.lora_formats import LoraLayout  # noqa: E402
from pipelines.training.lora_training import (  # noqa: E402
    LocalLoraTrainer,
    LocalTrainingRequest,
    TrainingParams,
)

TARGET_RATIO = 1.0


def pictures(count: int, size: int) -> list[DatasetImage]:
    images = []
    for index in range(count):
        image = Image.new("RGB", (size, size), ((70 * index) % 256, 120, 200 - 30 * index % 200))
        ImageDraw.Draw(image).ellipse((size // 4, size // 4, size // 2, size // 2), fill="white")
        out = io.BytesIO()
        image.save(out, format="PNG")
        images.append(
            DatasetImage(out.getvalue(), f"a shape {index}", "generated", None, f"b{index}")
        )
    return images


def dataset_for(lora_dir: Path, name: str, count: int, size: int) -> PreparedDataset:
    folder = LoraLayout(lora_dir, name).folder
    return prepare_dataset(pictures(count, size), folder, trigger_word="TOK", resolution=size)


async def ours(
    queue: JobQueue, model: str, lora_dir: Path, name: str, args: argparse.Namespace, **extra: Any
) -> dict[str, float]:
    dataset = dataset_for(lora_dir, name, args.images, args.size)
    params = TrainingParams(
        steps=args.steps,
        rank=4 if not args.full_size else 16,
        learning_rate=1e-4,
        batch_size=args.batch,
        seed=0,
        checkpoint_every=0,
        sample_every=0,
        **extra,
    )
    trainer = LocalLoraTrainer(queue, device=args.device, lora_dir=lora_dir)
    result = await trainer.train(LocalTrainingRequest(name, model, dataset, params), Progress())
    timed = result.timings["prepare_s"] + result.timings["train_s"]
    return {"steps_per_s": args.steps / timed, "device": result.device, "dtype": result.dtype}


def plain_loop(model: str, dataset: PreparedDataset, args: argparse.Namespace) -> float:
    """The recipe's loop, written out; returns steps/s (setup after loading included)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pixels = torch.from_numpy(
        np.stack(
            [
                np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1
                for p in dataset.image_paths()
            ]
        )
    ).permute(0, 3, 1, 2)
    input_ids = pipe.tokenizer(
        dataset.captions(),
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    started = time.perf_counter()
    unet, vae, text_encoder = pipe.unet, pipe.vae, pipe.text_encoder
    for part in (unet, vae, text_encoder):
        part.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    cast_training_params(unet, dtype=torch.float32)
    unet.train()
    optimizer = torch.optim.AdamW(
        [p for p in unet.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-2
    )
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    order: list[int] = []
    for _step in range(args.steps):
        if len(order) < args.batch:
            order += torch.randperm(len(pixels)).tolist()
        batch, order = order[: args.batch], order[args.batch :]
        latents = vae.encode(pixels[batch]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch),))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        hidden = text_encoder(input_ids[batch], return_dict=False)[0]
        prediction = unet(noisy, timesteps, hidden, return_dict=False)[0]
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return args.steps / (time.perf_counter() - started)


async def tiny(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    from tests.tiny_models import build_tiny_sd

    torch.set_num_threads(args.threads)
    model = str(build_tiny_sd(tmp / "tiny-sd"))
    queue = JobQueue()
    plain_set = dataset_for(tmp / "plain", "plain", args.images, args.size)
    ours_rates: list[float] = []
    plain_rates: list[float] = []
    figures: dict[str, Any] = {}
    for run in range(args.runs + 1):  # run 0 warms both up (imports, kernels)
        mine = await ours(queue, model, tmp / "loras", f"run{run}", args)
        theirs = await queue.run(
            "cpu", lambda _progress: plain_loop(model, plain_set, args), Progress()
        )
        if run:
            ours_rates.append(mine["steps_per_s"])
            plain_rates.append(theirs)
        figures.update(device=mine["device"], dtype=mine["dtype"])
    queue.shutdown()
    ours_median, plain_median = statistics.median(ours_rates), statistics.median(plain_rates)
    return {
        **figures,
        "steps": args.steps,
        "images": args.images,
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "ours_steps_per_s": ours_median,
        "plain_steps_per_s": plain_median,
        "ratio": ours_median / plain_median,
    }


async def full_size(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device; --full-size measures GPU training speed and memory"}
    sys.path.insert(0, str(REPO / "benchmarks"))
    from local_overhead import build_full_size_sd

    model = str(build_full_size_sd(tmp / "sd15-random"))
    queue = JobQueue()
    figures: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "size": args.size}
    for checkpointing in (False, True):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        name = f"full-gc{int(checkpointing)}"
        mine = await ours(
            queue, model, tmp / "loras", name, args, gradient_checkpointing=checkpointing
        )
        key = "with_checkpointing" if checkpointing else "without_checkpointing"
        figures[key] = {
            "steps_per_s": mine["steps_per_s"],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
            "dtype": mine["dtype"],
        }
    queue.shutdown()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="60, or 30 with --full-size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="32, or 512 with --full-size")
    parser.add_argument("--batch", type=int, default=None, help="4, or 1 with --full-size")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--full-size", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as folder:
        tmp = Path(folder)
        if args.full_size:
            args.steps, args.size = args.steps or 30, args.size or 512
            args.batch = args.batch or 1
            figures = asyncio.run(full_size(args, tmp))
            print(json.dumps(figures, indent=2))
            return 0
        args.steps, args.size, args.batch = args.steps or 60, args.size or 32, args.batch or 4
        args.device = "cpu" if args.device == "auto" else args.device
        figures = asyncio.run(tiny(args, tmp))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))
    ok = figures["ratio"] >= TARGET_RATIO
    print(
        f"LoRA training, tiny SD, {args.size}x{args.size}, batch {args.batch}, {args.steps} "
        f"steps: ours {figures['ours_steps_per_s']:.1f} steps/s vs plain recipe loop "
        f"{figures['plain_steps_per_s']:.1f} steps/s (median of {args.runs}) → ratio "
        f"{figures['ratio']:.2f} {'PASS' if ok else 'FAIL'} (≥ {TARGET_RATIO})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
