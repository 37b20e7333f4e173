"""A picture of a diffusion job's current latent, made in a step-end callback.

Decoding the latent with the VAE costs about as much as a denoising step; the preview
needs far less. Stable Diffusion's four latent channels map to RGB almost linearly, so
many UIs show `latent @ factors + bias`, rescaled from [-1, 1] (ComfyUI's
Latent2RGBPreviewer). The factors below are ComfyUI's, read 2026-11-30 from
comfyanonymous/ComfyUI comfy/latent_formats.py (classes SD15 and SDXL) and
latent_preview.py. The picture is the current noisy latent, not the final image: it
starts as coloured noise and settles as denoising goes on, which is what a person
watching wants to see.

SD 1.x/2.x and SDXL share the 4-channel latent but not its colours; which one a pipeline
has is read from its VAE's `scaling_factor` (0.18215 and 0.13025, the `scale_factor` of
the same two ComfyUI classes). Any other latent (16 channels, packed Flux latents) gets
no preview rather than a wrong one.

This runs in the device worker thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

from pipelines import previews
from pipelines.progress import Preview

# Rows are latent channels, columns R, G, B.
SD15_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_BIAS = (0.0, 0.0, 0.0)
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_BIAS = (0.1084, -0.0175, -0.0011)
SDXL_SCALING = 0.13025

Factors = tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]


def factors_for(pipe: Any) -> Factors | None:
    """The linear map for this pipeline's latents, or None when it has none."""
    config = getattr(getattr(pipe, "vae", None), "config", None)
    if config is None or getattr(config, "latent_channels", None) != 4:
        return None
    scaling = getattr(config, "scaling_factor", None) or 0.18215
    if abs(scaling - SDXL_SCALING) < 1e-4:
        return SDXL_FACTORS, SDXL_BIAS
    return SD15_FACTORS, SD15_BIAS


def preview_of(latents: Any, factors: Factors, size: tuple[int, int]) -> Preview | None:
    """The first latent of the batch as a picture of the image's shape (at most
    `previews.MAX_SIDE`); None for a tensor that is not (batch, 4, h, w)."""
    import torch
    from PIL import Image

    if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[1] != 4:
        return None
    weights, bias = factors
    with torch.no_grad():
        latent = latents[0].detach().to("cpu", torch.float32)
        rgb = torch.einsum("chw,cr->hwr", latent, torch.tensor(weights)) + torch.tensor(bias)
        pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8).numpy()
    width, height = size
    scale = min(1.0, previews.MAX_SIDE / max(width, height, 1))
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    picture = Image.fromarray(pixels, "RGB").resize(shape, Image.Resampling.BILINEAR)
    return previews.from_image(picture)
