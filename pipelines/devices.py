"""Which device and number format a local pipeline runs in, and seeded noise.

CUDA is preferred, then Apple's MPS, then the CPU; the operator can name one instead
(ATELIER_LOCAL_DEVICE). Half precision is what makes GPUs fast and fits big models in
their memory, but on a CPU it is about 15x slower than float32, so the CPU keeps float32.
bfloat16 is taken over float16 on CUDA where the card has it: it does not overflow in
the SD 1.x VAE, which float16 sometimes does (black images).

Noise comes from a CPU `torch.Generator` whatever the device, so one seed gives the same
image on a laptop and on a server (CUDA's generator draws different numbers).

torch is imported inside the functions: importing this module must stay free for people
who only use hosted backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class DevicePlan:
    """Where to run: a torch device string and a dtype name ("float32", "bfloat16", ...)."""

    device: str
    dtype: str

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def resolve_device(configured: str = "auto") -> str:
    """Turn "auto" into the best device present; check that a named one exists."""
    import torch

    configured = (configured or "auto").lower()
    if configured == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if configured.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"ATELIER_LOCAL_DEVICE is {configured} but torch finds no CUDA device "
                f"(torch {torch.__version__}; a CPU-only build cannot use CUDA). "
                "Set it to auto or cpu, or install a CUDA build of torch."
            )
        index = configured.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(
                f"ATELIER_LOCAL_DEVICE is {configured} but there are only "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})."
            )
        return configured
    if configured == "mps" and not _mps_available():
        raise ConfigError(
            "ATELIER_LOCAL_DEVICE is mps but torch finds no Apple GPU. Set it to auto or cpu."
        )
    return configured


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_dtype(device: str) -> str:
    """The fastest number format that keeps images correct on this device."""
    import torch

    if device.startswith("cuda"):
        with torch.cuda.device(torch.device(device)):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device == "mps":
        return "float16"
    return "float32"


def plan(configured: str = "auto") -> DevicePlan:
    device = resolve_device(configured)
    return DevicePlan(device=device, dtype=pick_dtype(device))


def seeded_generators(seeds: list[int]) -> list[Any]:
    """One CPU generator per image, so image i depends on seeds[i] alone on any device."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def free_accelerator_memory(device: str) -> None:
    """Hand cached blocks back after a pipeline is dropped, so the next one fits."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device == "mps" and _mps_available():
        torch.mps.empty_cache()
