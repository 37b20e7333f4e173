"""Before a training starts: roughly how long, how much memory, and what it will cost.

These are estimates and say so. Time is steps × a per-step time: the user's own last
training of the same model on the same device when there is one (measured, scaled by
resolution), else a rough figure for the device class at 512 px scaled by the model's
UNet size and the pixel count. Memory is the frozen weights at the training dtype plus
activations that grow with resolution and batch size. Cost is the price table's: the
local GPU-second rate (0 unless the user set one), or the Replicate trainer's hardware
rate × the estimated run time.

Only the standard library here; the device is resolved by the caller (that imports torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from core import money
from memory.loras import LoraRecord
from pipelines.catalogue.pricing import Estimate, PriceTable

# Seconds per step of SD 1.5 (860M-parameter UNet) at 512x512, batch 1, frozen parts
# cached (lora_training's recipe). Rough figures for a recent card of each class.
SECONDS_PER_STEP_512 = {"cuda": 0.35, "mps": 2.5, "cpu": 15.0}
SD15_UNET_BYTES_FP32 = 3_438_000_000
SD15_FROZEN_BYTES_FP32 = 4_270_000_000  # UNet + VAE + CLIP text encoder
ACTIVATIONS_512_BYTES = 3_000_000_000  # SD 1.5 at 512, batch 1, no gradient checkpointing
MIN_SECONDS_PER_STEP = 0.01
# ostris/flux-dev-lora-trainer on Replicate's H100: about 20 minutes for 1000 steps at
# 1024 (the trainer's page on replicate.com, not checked against a bill: low confidence).
# The price row in prices.toml gives the per-second rate.
REPLICATE_SECONDS_PER_STEP = {"ostris/flux-dev-lora-trainer": 1.2}
REPLICATE_SETUP_SECONDS = 120


@dataclass(frozen=True)
class TrainingEstimate:
    """What the confirmation question shows."""

    seconds: float
    memory_bytes: int | None  # None: on the provider's hardware
    cost: Estimate
    basis: str  # how the time was reached, in words

    def describe(self) -> str:
        if self.memory_bytes is None:
            memory = "memory: Replicate's GPU"
        else:
            gb = self.memory_bytes / 2**30
            memory = f"~{gb:.1f} GB of memory" if gb >= 0.1 else f"~{gb * 1024:.0f} MB of memory"
        if self.cost.unpriced:
            reserved = (
                f", up to {money.usd(self.cost.usd, 4)} reserved" if self.cost.usd > 0 else ""
            )
            cost = f"unknown (no price for it{reserved})"
        else:
            cost = money.usd(self.cost.usd, 4)
        return f"~{duration(self.seconds)}, {memory}, cost {cost} ({self.basis})"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _unet_bytes(base_model: str) -> tuple[int, int, bool]:
    """(UNet bytes, all frozen bytes) as stored, and whether they were measured."""
    folder = Path(base_model)
    if not folder.is_absolute() or not folder.is_dir():
        return SD15_UNET_BYTES_FP32, SD15_FROZEN_BYTES_FP32, False

    def size(part: str) -> int:
        path = folder / part
        if not path.is_dir():
            return 0
        files = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
        return sum(p.stat().st_size for p in files)

    unet = size("unet")
    if unet == 0:
        return SD15_UNET_BYTES_FP32, SD15_FROZEN_BYTES_FP32, False
    return unet, unet + size("vae") + size("text_encoder"), True


def local_estimate(
    prices: PriceTable | None,
    *,
    base_model: str,
    device: str,
    dtype: str,
    steps: int,
    resolution: int,
    batch_size: int = 1,
    previous: LoraRecord | None = None,
    source: str | None = None,
) -> TrainingEstimate:
    """Time, memory and cost of a local training (blocking: reads the model folder).

    `source` is where the model loads from (LocalDiffusers.model_source): only an
    absolute folder is measured, so a hub id never reads a folder of the same name.
    """
    unet, frozen, measured = _unet_bytes(source or base_model)
    area = (resolution / 512) ** 2
    kind = device.split(":")[0]
    per_step_then = (previous.metrics.get("seconds_per_step") if previous else None) or 0
    if previous is not None and per_step_then > 0:
        then = int(previous.metrics.get("resolution") or resolution)
        per_step = float(per_step_then) * (resolution / then) ** 2
        basis = f"measured on your last training of this model, {per_step:.2f} s/step"
    else:
        scale = unet / SD15_UNET_BYTES_FP32
        per_step = SECONDS_PER_STEP_512.get(kind, SECONDS_PER_STEP_512["cpu"]) * area * scale
        per_step = max(MIN_SECONDS_PER_STEP, per_step * batch_size)
        sized = "its size on disk" if measured else "assumed SD 1.5-sized"
        basis = f"rough: {kind} at ~{per_step:.2f} s/step, model {sized}"
    seconds = per_step * steps + 10  # + loading and encoding the images
    weight_bytes = frozen / 2 if dtype in ("float16", "bfloat16") else frozen
    activations = ACTIVATIONS_512_BYTES * area * batch_size * (unet / SD15_UNET_BYTES_FP32)
    memory = int(weight_bytes + activations)
    if prices is None:
        cost = Estimate(Decimal(0), ["no price table: not counted"], unpriced=False)
    else:
        cost = prices.estimate("local", base_model, seconds=round(seconds, 3))
    return TrainingEstimate(seconds, memory, cost, basis)


def replicate_estimate(prices: PriceTable | None, *, trainer: str, steps: int) -> TrainingEstimate:
    per_step = REPLICATE_SECONDS_PER_STEP.get(trainer, 1.5)
    seconds = per_step * steps + REPLICATE_SETUP_SECONDS
    if prices is None:
        cost = Estimate(Decimal(0), ["no price table"], unpriced=True)
    else:
        cost = prices.estimate("replicate", trainer, seconds=round(seconds, 3))
    basis = f"rough: ~{per_step:g} s/step on Replicate's GPU plus ~2 min to start"
    return TrainingEstimate(seconds, None, cost, basis)
