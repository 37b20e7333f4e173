"""The one interface every image backend implements, and the checks done before a call.

A backend declares what each of its models supports as plain data (`Capabilities`); a
request that asks for anything else is refused with a message listing what the backend
can do, never silently changed into one it can honour. Editing is the same call as
generating, with input images: a backend says in `Capabilities.edit` whether it follows
an instruction ("make it bluer") or re-renders from a full prompt (img2img).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from core.errors import InvalidInput
from pipelines.progress import Progress

EditStyle = Literal["none", "instruction", "img2img"]

SIZE_PATTERN = re.compile(r"^(\d{2,5})x(\d{2,5})$")


@dataclass(frozen=True)
class SizeRange:
    """Any WIDTHxHEIGHT within bounds whose sides are multiples of `multiple`."""

    min_side: int = 64
    max_side: int = 2048
    multiple: int = 8
    max_pixels: int = 2048 * 2048
    min_pixels: int = 0
    max_aspect: float | None = None  # long side / short side, e.g. 3.0 for 3:1

    def describe(self) -> str:
        text = (
            f"any WIDTHxHEIGHT with sides from {self.min_side} to {self.max_side} in "
            f"multiples of {self.multiple}"
        )
        if self.min_pixels:
            text += f", {self.min_pixels:,} to {self.max_pixels:,} pixels in all"
        if self.max_aspect:
            text += f", at most {self.max_aspect:g}:1"
        return text

    def allows(self, width: int, height: int) -> bool:
        return (
            self.min_side <= width <= self.max_side
            and self.min_side <= height <= self.max_side
            and width % self.multiple == 0
            and height % self.multiple == 0
            and self.min_pixels <= width * height <= self.max_pixels
            and (
                self.max_aspect is None
                or max(width, height) <= self.max_aspect * min(width, height)
            )
        )


@dataclass(frozen=True)
class Capabilities:
    """What one model of one backend can honour; `sizes[0]` is its default size."""

    sizes: tuple[str, ...]
    size_range: SizeRange | None = None
    qualities: tuple[str, ...] = ("auto",)
    max_n: int = 1
    seed: bool = False
    edit: EditStyle = "none"
    max_input_images: int = 0
    mask: bool = False
    negative_prompt: bool = False
    steps: bool = False
    max_steps: int = 150
    guidance: bool = False
    strength: bool = False
    schedulers: tuple[str, ...] = ()
    lora: bool = False
    backgrounds: tuple[str, ...] = ()
    output_formats: tuple[str, ...] = ("png",)
    extra_inputs: bool = False
    max_prompt_chars: int = 4000

    def allows_size(self, size: str) -> bool:
        """A listed size, or WIDTHxHEIGHT within `size_range`."""
        if size in self.sizes:
            return True
        match = SIZE_PATTERN.match(size)
        return bool(
            self.size_range and match and self.size_range.allows(int(match[1]), int(match[2]))
        )

    def summary(self) -> str:
        """One line a user (or the model) can act on when a request is refused."""
        parts = [f"sizes {', '.join(self.sizes)}"]
        if self.size_range:
            parts[0] += f" or {self.size_range.describe()}"
        parts.append(f"up to {self.max_n} image(s) per request")
        if self.qualities != ("auto",):
            parts.append(f"quality {'/'.join(self.qualities)}")
        features = [
            name
            for name, on in (
                ("seed", self.seed),
                ("negative prompt", self.negative_prompt),
                ("steps", self.steps),
                ("guidance", self.guidance),
                ("strength", self.strength),
                ("LoRA", self.lora),
                ("mask", self.mask),
                (f"background {'/'.join(self.backgrounds)}", bool(self.backgrounds)),
                (f"output {'/'.join(self.output_formats)}", len(self.output_formats) > 1),
            )
            if on
        ]
        if self.edit != "none":
            features.append(f"editing ({self.edit}, up to {self.max_input_images} input image(s))")
        if features:
            parts.append("supports " + ", ".join(features))
        return "; ".join(parts)


@dataclass(frozen=True)
class InputImage:
    """An image handed to a backend (edit source, img2img init, or mask), already decoded."""

    data: bytes
    mime: str
    width: int
    height: int
    image_id: str | None = None


@dataclass(frozen=True)
class LoraSpec:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class ImageRequest:
    """Everything a tool can ask for; None means "the model's default"."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: str | None = None
    quality: str | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    scheduler: str | None = None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    loras: tuple[LoraSpec, ...] = ()
    background: str | None = None
    output_format: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def width_height(self) -> tuple[int, int] | None:
        match = SIZE_PATTERN.match(self.size or "")
        return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    mime: str
    width: int
    height: int
    seed: int | None = None


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    backend: str
    model: str
    prompt_sent: str
    parameters: dict[str, Any] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    seed_honoured: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class ImageBackend(Protocol):
    """What tools call; they look backends up by id in the registry, never import them.

    A backend may also set `edit_model`: the model edit_image switches to when the
    conversation's model cannot edit.

    `generate` must refuse (via `check_request`) before spending anything, report
    progress through `progress` when given, and stop promptly when its task is cancelled
    (the user pressed stop) or `progress.cancelled` is set.
    """

    id: str
    label: str  # the backend's name for people ("OpenAI"); messages add the model
    default_model: str

    def capabilities(self, model: str | None = None) -> Capabilities: ...

    def suggested_models(self) -> list[str]: ...

    async def generate(
        self, request: ImageRequest, progress: Progress | None = None
    ) -> ImageResult: ...


def _check_size(label: str, caps: Capabilities, size: str) -> None:
    if caps.allows_size(size):
        return
    valid = ", ".join(caps.sizes)
    if caps.size_range:
        valid += f", or {caps.size_range.describe()}"
    raise InvalidInput(f"{label} cannot make {size} images. Valid sizes: {valid}.")


def _refuse_unsupported(label: str, caps: Capabilities, request: ImageRequest) -> None:
    asked = [
        ("a negative prompt", request.negative_prompt, caps.negative_prompt),
        ("a step count", request.steps, caps.steps),
        ("a guidance scale", request.guidance, caps.guidance),
        ("a strength", request.strength, caps.strength),
        ("a LoRA", request.loras, caps.lora),
        ("a mask", request.mask, caps.mask),
        ("a background", request.background, bool(caps.backgrounds)),
        ("input images", request.images, caps.edit != "none"),
        ("extra inputs", request.extra, caps.extra_inputs),
    ]
    for what, value, supported in asked:
        if value not in (None, (), {}) and not supported:
            raise InvalidInput(f"{label} does not take {what}. It can do: {caps.summary()}.")


def check_request(backend: ImageBackend, request: ImageRequest) -> ImageRequest:
    """Refuse what the backend cannot do; fill unset options with the model's defaults."""
    model = request.model or backend.default_model
    caps = backend.capabilities(model)
    label = f"{backend.label} {model}"
    prompt = (request.prompt or "").strip()
    if not prompt:
        raise InvalidInput("The prompt is empty: describe the image you want.")
    if len(prompt) > caps.max_prompt_chars:
        raise InvalidInput(
            f"The prompt has {len(prompt):,} characters; {label} accepts at most "
            f"{caps.max_prompt_chars:,}."
        )
    if not 1 <= request.n <= caps.max_n:
        raise InvalidInput(
            f"{label} makes 1 to {caps.max_n} images per request; {request.n} was asked."
        )
    _refuse_unsupported(label, caps, request)
    size = request.size or caps.sizes[0]
    _check_size(label, caps, size)
    quality = request.quality or caps.qualities[0]
    if quality not in caps.qualities:
        raise InvalidInput(
            f"{label} has no quality {quality!r}. Valid: {', '.join(caps.qualities)}."
        )
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise InvalidInput("A seed is a whole number from 0 to 2^63-1.")
    if request.steps is not None and not 1 <= request.steps <= caps.max_steps:
        raise InvalidInput(f"Steps must be from 1 to {caps.max_steps}; {request.steps} was asked.")
    if request.guidance is not None and not 0 <= request.guidance <= 30:
        raise InvalidInput(f"Guidance must be from 0 to 30; {request.guidance} was asked.")
    if request.strength is not None and not 0 < request.strength <= 1:
        raise InvalidInput(f"Strength must be above 0 and at most 1; {request.strength} was asked.")
    if request.scheduler is not None and request.scheduler not in caps.schedulers:
        known = ", ".join(caps.schedulers) or "none (the model's own is used)"
        raise InvalidInput(f"{label} has no scheduler {request.scheduler!r}. Known: {known}.")
    if request.background is not None and request.background not in caps.backgrounds:
        raise InvalidInput(
            f"{label} has no background {request.background!r}. "
            f"Valid: {', '.join(caps.backgrounds)}."
        )
    output_format = request.output_format or caps.output_formats[0]
    if output_format not in caps.output_formats:
        raise InvalidInput(
            f"{label} cannot write {output_format!r}. Valid: {', '.join(caps.output_formats)}."
        )
    if len(request.images) > caps.max_input_images:
        raise InvalidInput(
            f"{label} takes at most {caps.max_input_images} input image(s); "
            f"{len(request.images)} were given."
        )
    if request.mask is not None:
        if not request.images:
            raise InvalidInput("A mask needs an image to apply it to.")
        first = request.images[0]
        if (request.mask.width, request.mask.height) != (first.width, first.height):
            raise InvalidInput(
                f"The mask is {request.mask.width}x{request.mask.height} but the image is "
                f"{first.width}x{first.height}; they must be the same size."
            )
    return replace(
        request,
        model=model,
        prompt=prompt,
        size=size,
        quality=quality,
        output_format=output_format,
    )
