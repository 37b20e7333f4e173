"""Local backend overhead: LocalDiffusers.generate against the bare diffusers pipeline.

Runs on a tiny random-weight SD pipeline built into a temporary folder (no download):

(a) warm overhead: `--runs` generations through `LocalDiffusers.generate` (checks, job
    queue, step callback, PNG encoding) against calls of the cached pipeline with the
    same arguments in the same worker thread, interleaved, compared by median.
    Target: ours / direct <= 1.05.
(b) cold vs warm: the first request of a freshly started process (importing diffusers,
    loading the model, denoising) against the second, both small (64x64, 2 steps) so
    that the figure shows what the cache saves. The tiny model is built in a subprocess
    so that this process starts as the app does. Target: >= 10x.

    .venv/bin/python benchmarks/local_overhead.py [--runs 20 --steps 8 --size 128]
    .venv/bin/python benchmarks/local_overhead.py --full-size [--steps 30]

--full-size builds the SD 1.5 architecture (UNet, VAE, CLIP text encoder: ~1.07 B
parameters) with random weights from hand-written configs, and reports denoising it/s
and peak GPU memory at 512x512 on CUDA; on a GPU, speed does not depend on the weights'
values. Without CUDA it is skipped (add --allow-cpu to run it anyway, slowly).
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipelines.images.base import ImageRequest  # noqa: E402
from pipelines.images.local_diffusers import LocalDiffusers  # noqa: E402
from pipelines.images.pipeline_cache import PipelineCache  # noqa: E402
from pipelines.job_queue import JobQueue  # noqa: E402
from pipelines.progress import Progress  # noqa: E402

TARGET_OVERHEAD = 1.05
TARGET_COLD_WARM = 10.0


class TimedProgress(Progress):
    """Records when each report arrived, to time denoising steps alone."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def report(self, done: int, total: int, note: str = "") -> None:
        if note == "denoising":
            self.times.append(time.perf_counter())
        super().report(done, total, note)


def build_in_subprocess(builder: str, folder: Path) -> float:
    """Build a model in another process, so this one has not imported diffusers yet."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); "
        f"from tests.tiny_models import {builder}; "
        f"from pathlib import Path; {builder}(Path({str(folder)!r}))"
    )
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


async def overhead(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    queue = JobQueue()
    backend = LocalDiffusers(model=str(folder), device=args.device, runner=queue)
    request = ImageRequest(
        "a lighthouse at dusk",
        size=f"{args.size}x{args.size}",
        steps=args.steps,
        guidance=7.5,
        seed=1,
    )
    # (b) cold: this process has not imported torch/diffusers; the request pays for that.
    # A small request, so the figure shows what the cache saves rather than denoising.
    small = replace(request, size="64x64", steps=2)
    started = time.perf_counter()
    await backend.generate(small)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    await backend.generate(small)
    warm = time.perf_counter() - started
    await backend.generate(request)  # warm-up at the measured size

    import torch

    plan = backend._plan
    assert plan is not None
    pipe = backend.cache.get(str(folder), plan)
    load_started = time.perf_counter()
    PipelineCache().get(str(folder), plan)  # a second, empty cache: the load alone
    load_only = time.perf_counter() - load_started

    def direct(_progress: Progress) -> None:
        pipe(
            prompt=request.prompt,
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            width=args.size,
            height=args.size,
            generator=torch.Generator("cpu").manual_seed(1),
            output_type="pil",
        )

    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.runs):  # interleaved, so drift in machine load hits both alike
        started = time.perf_counter()
        await backend.generate(request)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        # The same worker thread as ours: torch's CPU thread team belongs to the calling
        # thread, and two teams spinning on a small machine slow each other down.
        await queue.run(plan.device, direct, Progress())
        theirs.append(time.perf_counter() - started)
    queue.shutdown()
    return {
        "device": plan.device,
        "dtype": plan.dtype,
        "ours_median_s": statistics.median(ours),
        "direct_median_s": statistics.median(theirs),
        "overhead_ratio": statistics.median(ours) / statistics.median(theirs),
        "cold_first_request_s": cold,
        "of_which_load_from_disk_s": load_only,
        "warm_second_request_s": warm,
        "cold_warm_ratio": cold / warm,
    }


def build_full_size_sd(folder: Path, device: str = "cpu") -> Path:
    """SD 1.5's architecture with random weights, saved like a downloaded checkpoint.

    The modules are made on the target device (random init of ~1.07 B parameters on a
    GPU takes a moment, on a CPU tens of seconds) and saved in float16 on CUDA (half the
    bytes to write and read back); the loader casts them to the plan's dtype anyway.
    The tokenizer is the tests' hand-written byte-level one: its ids fit CLIP's 49408
    vocabulary, and speed does not depend on it.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from diffusers import UNet2DConditionModel as UNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from tests.tiny_models import write_tiny_clip_tokenizer

    folder = Path(folder)
    write_tiny_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            act_fn="silu",
            center_input_sample=False,
            flip_sin_to_cos=True,
            freq_shift=0,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            act_fn="silu",
            sample_size=512,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        unet=unet.to(dtype),
        vae=vae.to(dtype),
        text_encoder=text_encoder.to(dtype),
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    write_tiny_clip_tokenizer(folder / "tokenizer")  # transformers 5 saves tokenizer.json only
    del pipe, unet, vae, text_encoder
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return folder


def _millions(pipe: Any) -> int:
    parts = (pipe.unet, pipe.vae, pipe.text_encoder)
    return round(sum(p.numel() for part in parts for p in part.parameters()) / 1e6)


async def full_size(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import torch

    has_cuda = torch.cuda.is_available()
    if not has_cuda and not args.allow_cpu:
        return {"skipped": "no CUDA device; --full-size measures GPU speed (--allow-cpu forces)"}
    started = time.perf_counter()
    build_full_size_sd(folder, "cuda" if has_cuda else "cpu")
    built = time.perf_counter() - started
    backend = LocalDiffusers(model=str(folder), device=args.device)
    request = ImageRequest("a lighthouse at dusk", size="512x512", steps=args.steps, seed=1)
    started = time.perf_counter()
    await backend.generate(request)  # loads, and warms up kernels
    first = time.perf_counter() - started
    if has_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    progress = TimedProgress()
    started = time.perf_counter()
    result = await backend.generate(request, progress)
    total = time.perf_counter() - started
    steps = len(progress.times)
    figures: dict[str, Any] = {
        "device": result.parameters["device"],
        "dtype": result.parameters["dtype"],
        "gpu": torch.cuda.get_device_name() if has_cuda else None,
        "params_millions": _millions(backend.cache.get(str(folder), backend._plan)),  # type: ignore[arg-type]
        "build_and_save_s": built,
        "first_request_s": first,
        "image_s": total,
        "denoise_it_per_s": (steps - 1) / (progress.times[-1] - progress.times[0])
        if steps > 1
        else None,
        "steps": steps,
    }
    if has_cuda:
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    backend.runner.shutdown()  # type: ignore[attr-defined]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="8, or 30 with --full-size")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        if args.full_size:
            args.steps = args.steps or 30
            figures = asyncio.run(full_size(args, Path(tmp) / "sd15-random"))
            print(json.dumps(figures, indent=2))
            return 0
        args.steps = args.steps or 8
        folder = Path(tmp) / "tiny-sd"
        build_in_subprocess("build_tiny_sd", folder)
        figures = asyncio.run(overhead(args, folder))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    ok_overhead = figures["overhead_ratio"] <= TARGET_OVERHEAD
    ok_cold = figures["cold_warm_ratio"] >= TARGET_COLD_WARM
    print(
        f"(a) warm overhead: ours {figures['ours_median_s'] * 1000:.1f} ms vs direct "
        f"{figures['direct_median_s'] * 1000:.1f} ms (median of {args.runs}, "
        f"{args.size}x{args.size}, {args.steps} steps) → ratio "
        f"{figures['overhead_ratio']:.3f} {'PASS' if ok_overhead else 'FAIL'} "
        f"(≤ {TARGET_OVERHEAD})"
    )
    print(
        f"(b) cold vs warm (64x64, 2 steps): first request "
        f"{figures['cold_first_request_s']:.2f} s (of which "
        f"loading from disk {figures['of_which_load_from_disk_s']:.2f} s, the rest imports "
        f"and denoising) vs second {figures['warm_second_request_s']:.3f} s → "
        f"{figures['cold_warm_ratio']:.1f}x {'PASS' if ok_cold else 'FAIL'} "
        f"(≥ {TARGET_COLD_WARM:g}x)"
    )
    return 0 if ok_overhead and ok_cold else 1


if __name__ == "__main__":
    sys.exit(main())
