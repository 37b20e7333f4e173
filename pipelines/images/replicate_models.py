"""Replicate models as data: what each one can do and how a request becomes its input.

Every model on Replicate names its inputs its own way (`num_outputs` or nothing,
`aspect_ratio` or `width`/`height`, `guidance` or `guidance_scale`, `input_image` or
`image`), so supporting a popular model is one row here, not code. A model without a row
gets `GENERIC`: prompt, width/height, seed and num_outputs, with `extra` passed through
untouched for everything else, and Replicate itself judging what it accepts.

Sizes stay in the project's WIDTHxHEIGHT vocabulary; for aspect-ratio models a size
names the ratio to send (the model picks the exact pixels, about 1 MP for FLUX, and the
result reports the real dimensions). Input names and choices were read from the models'
pages on replicate.com (2026); pinned versions say where they came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.errors import InvalidInput
from pipelines.images.base import Capabilities, ImageRequest, SizeRange

# black-forest-labs' cog-flux table: aspect ratio -> pixels at ~1 MP.
FLUX_ASPECTS: dict[str, str] = {
    "1024x1024": "1:1",
    "1344x768": "16:9",
    "768x1344": "9:16",
    "1536x640": "21:9",
    "640x1536": "9:21",
    "1216x832": "3:2",
    "832x1216": "2:3",
    "1152x896": "4:3",
    "896x1152": "3:4",
    "1088x896": "5:4",
    "896x1088": "4:5",
}
# FLUX 1.1 Pro Ultra renders ~4 MP; the pixels are approximate, the ratio is what is sent.
ULTRA_ASPECTS: dict[str, str] = {
    "2048x2048": "1:1",
    "2752x1536": "16:9",
    "1536x2752": "9:16",
    "3136x1344": "21:9",
    "1344x3136": "9:21",
    "2496x1664": "3:2",
    "1664x2496": "2:3",
    "2368x1792": "4:3",
    "1792x2368": "3:4",
    "2304x1856": "5:4",
    "1856x2304": "4:5",
}
KONTEXT_ASPECTS: dict[str, str] = {**FLUX_ASPECTS, "1408x704": "2:1", "704x1408": "1:2"}
IMAGEN_ASPECTS: dict[str, str] = {
    "1024x1024": "1:1",
    "1408x768": "16:9",
    "768x1408": "9:16",
    "1280x896": "4:3",
    "896x1280": "3:4",
}
IDEOGRAM_ASPECTS: dict[str, str] = {
    "1024x1024": "1:1",
    "1312x736": "16:9",
    "736x1312": "9:16",
    "1152x864": "4:3",
    "864x1152": "3:4",
    "1248x832": "3:2",
    "832x1248": "2:3",
    "1280x800": "16:10",
    "800x1280": "10:16",
    "1120x896": "5:4",
    "896x1120": "4:5",
    "1408x704": "2:1",
    "704x1408": "1:2",
    "1536x512": "3:1",
    "512x1536": "1:3",
}
SDXL_SIZES = (
    "1024x1024",
    "1152x896",
    "896x1152",
    "1216x832",
    "832x1216",
    "1344x768",
    "768x1344",
    "1536x640",
    "640x1536",
)
SDXL_SCHEDULERS = (
    "DDIM",
    "DPMSolverMultistep",
    "HeunDiscrete",
    "KarrasDPM",
    "K_EULER_ANCESTRAL",
    "K_EULER",
    "PNDM",
)
# replicate.com/stability-ai/sdxl/versions, latest as of 2026: SDXL has no official-model
# endpoint, so a prediction must name a version.
SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"


@dataclass(frozen=True)
class InputNames:
    """The model's input name for each ImageRequest field; None = it has no such input."""

    prompt: str = "prompt"
    aspect_ratio: str | None = None
    aspect_ratios: Mapping[str, str] = field(default_factory=dict)  # "WxH" -> ratio sent
    custom_aspect: str | None = None  # the ratio value that makes width/height count
    match_input: str | None = None  # the ratio value that follows the input image
    width: str | None = None
    height: str | None = None
    n: str | None = None
    seed: str | None = None
    negative_prompt: str | None = None
    steps: str | None = None
    guidance: str | None = None
    strength: str | None = None
    scheduler: str | None = None
    image: str | None = None
    mask: str | None = None
    output_format: str | None = None
    output_format_values: Mapping[str, str] = field(default_factory=lambda: {"jpeg": "jpg"})


@dataclass(frozen=True)
class ReplicateModel:
    """One model: its capabilities, its input names, and the limits Capabilities lacks."""

    capabilities: Capabilities
    inputs: InputNames
    version: str | None = None  # pinned version, for models without an official endpoint
    guidance_range: tuple[float, float] | None = None
    max_seed: int = 2**32 - 1
    input_sets_size: bool = False  # with an input image, the output takes its size
    mask_repaints: Literal["white", "black"] = "white"
    known: bool = True


_PNG_WEBP_JPEG = ("png", "webp", "jpeg")
_PNG_JPEG = ("png", "jpeg")


def _aspect_model(aspects: Mapping[str, str], **names: Any) -> InputNames:
    return InputNames(aspect_ratio="aspect_ratio", aspect_ratios=dict(aspects), **names)


FLUX_SCHNELL = ReplicateModel(
    Capabilities(
        sizes=tuple(FLUX_ASPECTS),
        max_n=4,
        seed=True,
        steps=True,
        max_steps=4,
        output_formats=_PNG_WEBP_JPEG,
        extra_inputs=True,
    ),
    _aspect_model(
        FLUX_ASPECTS,
        n="num_outputs",
        seed="seed",
        steps="num_inference_steps",
        output_format="output_format",
    ),
)
FLUX_DEV = ReplicateModel(
    Capabilities(
        sizes=tuple(FLUX_ASPECTS),
        max_n=4,
        seed=True,
        steps=True,
        max_steps=50,
        guidance=True,
        strength=True,
        edit="img2img",
        max_input_images=1,
        output_formats=_PNG_WEBP_JPEG,
        extra_inputs=True,
    ),
    _aspect_model(
        FLUX_ASPECTS,
        n="num_outputs",
        seed="seed",
        steps="num_inference_steps",
        guidance="guidance",
        strength="prompt_strength",
        image="image",
        output_format="output_format",
    ),
    guidance_range=(0.0, 10.0),
    input_sets_size=True,  # "the aspect ratio of your output will match this image"
)
FLUX_PRO = ReplicateModel(
    Capabilities(
        sizes=tuple(FLUX_ASPECTS),
        size_range=SizeRange(min_side=256, max_side=1440, multiple=32, max_pixels=1440 * 1440),
        seed=True,
        output_formats=_PNG_WEBP_JPEG,
        extra_inputs=True,
    ),
    _aspect_model(
        FLUX_ASPECTS,
        custom_aspect="custom",
        width="width",
        height="height",
        seed="seed",
        output_format="output_format",
    ),
)
FLUX_PRO_ULTRA = ReplicateModel(
    Capabilities(
        sizes=tuple(ULTRA_ASPECTS), seed=True, output_formats=_PNG_JPEG, extra_inputs=True
    ),
    _aspect_model(ULTRA_ASPECTS, seed="seed", output_format="output_format"),
)
FLUX_KONTEXT = ReplicateModel(
    Capabilities(
        sizes=tuple(KONTEXT_ASPECTS),
        seed=True,
        edit="instruction",
        max_input_images=1,
        output_formats=_PNG_JPEG,
        extra_inputs=True,
    ),
    _aspect_model(
        KONTEXT_ASPECTS,
        match_input="match_input_image",
        seed="seed",
        image="input_image",
        output_format="output_format",
    ),
)
SDXL = ReplicateModel(
    Capabilities(
        sizes=SDXL_SIZES,
        size_range=SizeRange(min_side=256, max_side=2048, multiple=8, max_pixels=2048 * 2048),
        max_n=4,
        seed=True,
        edit="img2img",
        max_input_images=1,
        mask=True,
        negative_prompt=True,
        steps=True,
        max_steps=500,
        guidance=True,
        strength=True,
        schedulers=SDXL_SCHEDULERS,
        extra_inputs=True,
    ),
    InputNames(
        width="width",
        height="height",
        n="num_outputs",
        seed="seed",
        negative_prompt="negative_prompt",
        steps="num_inference_steps",
        guidance="guidance_scale",
        strength="prompt_strength",
        scheduler="scheduler",
        image="image",
        mask="mask",
    ),
    version=SDXL_VERSION,
    guidance_range=(1.0, 50.0),
    input_sets_size=True,
    mask_repaints="white",  # "black areas will be preserved, white areas will be inpainted"
)
IMAGEN_4 = ReplicateModel(
    Capabilities(sizes=tuple(IMAGEN_ASPECTS), output_formats=_PNG_JPEG, extra_inputs=True),
    _aspect_model(IMAGEN_ASPECTS, output_format="output_format"),
)
IDEOGRAM_V3 = ReplicateModel(
    Capabilities(sizes=tuple(IDEOGRAM_ASPECTS), seed=True, extra_inputs=True),
    _aspect_model(IDEOGRAM_ASPECTS, seed="seed"),
    max_seed=2**31 - 1,
)
# A model without a row: the common inputs; Replicate validates the rest (its 422 detail
# reaches the user), and `extra` carries whatever else the model takes.
GENERIC = ReplicateModel(
    Capabilities(
        sizes=("1024x1024", "1344x768", "768x1344", "1152x896", "896x1152"),
        size_range=SizeRange(min_side=64, max_side=4096, multiple=1, max_pixels=4096 * 4096),
        max_n=4,
        seed=True,
        extra_inputs=True,
    ),
    InputNames(width="width", height="height", n="num_outputs", seed="seed"),
    known=False,
)

MODELS: dict[str, ReplicateModel] = {
    "black-forest-labs/flux-schnell": FLUX_SCHNELL,
    "black-forest-labs/flux-dev": FLUX_DEV,
    "black-forest-labs/flux-1.1-pro": FLUX_PRO,
    "black-forest-labs/flux-1.1-pro-ultra": FLUX_PRO_ULTRA,
    "black-forest-labs/flux-kontext-pro": FLUX_KONTEXT,
    "black-forest-labs/flux-kontext-max": FLUX_KONTEXT,
    "stability-ai/sdxl": SDXL,
    "google/imagen-4": IMAGEN_4,
    "google/imagen-4-fast": IMAGEN_4,
    "google/imagen-4-ultra": IMAGEN_4,
    "ideogram-ai/ideogram-v3-turbo": IDEOGRAM_V3,
    "ideogram-ai/ideogram-v3-balanced": IDEOGRAM_V3,
    "ideogram-ai/ideogram-v3-quality": IDEOGRAM_V3,
}


def lookup(model: str) -> ReplicateModel:
    """The row for 'owner/name[:version]' (the version does not change the inputs)."""
    return MODELS.get(model.strip().split(":", 1)[0].lower(), GENERIC)


def build_input(
    spec: ReplicateModel,
    request: ImageRequest,
    *,
    seed: int | None,
    size_given: bool,
    image_uri: str | None = None,
    mask_uri: str | None = None,
) -> dict[str, Any]:
    """The `input` object for one prediction, from an already checked request.

    `size_given` is whether the user chose the size: with an input image and no chosen
    size, models that can follow the image do (`match_input_image`), others get no size.
    """
    names = spec.inputs
    values: dict[str, Any] = {names.prompt: request.prompt}
    follow_image = image_uri is not None and not size_given
    if follow_image and names.match_input and names.aspect_ratio:
        values[names.aspect_ratio] = names.match_input
    elif not follow_image or not spec.input_sets_size:
        values.update(_size_inputs(names, request.size or ""))
    optional = (
        (names.n, request.n),
        (names.seed, seed),
        (names.negative_prompt, request.negative_prompt),
        (names.steps, request.steps),
        (names.guidance, request.guidance),
        (names.strength, request.strength if image_uri else None),
        (names.scheduler, request.scheduler),
        (names.image, image_uri),
        (names.mask, mask_uri),
    )
    for name, value in optional:
        if name is not None and value is not None:
            values[name] = value
    if names.output_format and request.output_format:
        fmt = request.output_format
        values[names.output_format] = names.output_format_values.get(fmt, fmt)
    clashes = sorted(set(values) & set(request.extra))
    if clashes:
        raise InvalidInput(
            f"Extra input {', '.join(map(repr, clashes))} is already set from the request's "
            "own options (prompt, size, seed, ...); set it there instead."
        )
    return {**values, **request.extra}


def _size_inputs(names: InputNames, size: str) -> dict[str, Any]:
    if names.aspect_ratio and size in names.aspect_ratios:
        return {names.aspect_ratio: names.aspect_ratios[size]}
    width, _, height = size.partition("x")
    if not (names.width and names.height and width.isdigit() and height.isdigit()):
        return {}
    sized: dict[str, Any] = {names.width: int(width), names.height: int(height)}
    if names.aspect_ratio and names.custom_aspect:
        sized = {names.aspect_ratio: names.custom_aspect, **sized}
    return sized
