"""The one interface every video backend implements, and the checks done before a call.

Video is kept apart from the image interface (`pipelines/images/base.py`): a clip has a length,
a frame rate and perhaps a first frame, not a count, a quality or a mask, and forcing
both into one request type would leave most fields meaningless for each. What a model
can do is plain data (`VideoCapabilities`); a request outside it is refused with a
message that lists what the model takes, never quietly changed into one it can honour.

A backend hands back an `EncodedVideo`: an H.264 MP4 any browser plays, a PNG poster
frame, and the clip's real size, frame count and rate as measured from the file, so what
is recorded is what was made rather than what was asked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from core.errors import InvalidInput
from pipelines.images.base import SIZE_PATTERN, InputImage, SizeRange
from pipelines.progress import Progress

PromptUse = Literal["required", "optional", "none"]


@dataclass(frozen=True)
class VideoCapabilities:
    """What one model of one video backend can honour.

    The length is set one of two ways: from a few fixed clip lengths (`seconds_choices`,
    e.g. Kling's 5 or 10 s), or as a frame count within `frames_range` at the chosen
    frame rate (Stable Video Diffusion, Wan). `sizes` are the sizes a request may name
    (`sizes[0]` is the default); with neither sizes nor a range the model picks the size
    itself (usually the input image's shape).

    Without a length asked, a frame-count model makes `default_seconds` x `default_fps`
    frames, at whatever rate is asked: a faster rate gives a shorter clip of the same
    frames, which is how these models are meant to be used.
    """

    text_to_video: bool
    image_to_video: bool
    fps_range: tuple[int, int]
    default_fps: int
    default_seconds: float
    seconds_choices: tuple[float, ...] = ()
    frames_range: tuple[int, int] | None = None
    length: bool = True  # False: the model alone decides the length and frame rate
    sizes: tuple[str, ...] = ()
    size_range: SizeRange | None = None
    seed: bool = False
    prompt: PromptUse = "required"
    steps: bool = False
    max_steps: int = 100
    max_prompt_chars: int = 2000

    def seconds_range(self, fps: int | None = None) -> tuple[float, float]:
        """Shortest and longest clip, at `fps` (or over every allowed rate)."""
        if self.seconds_choices:
            return min(self.seconds_choices), max(self.seconds_choices)
        low_frames, high_frames = self.frames_range or (1, 1)
        fastest, slowest = (fps, fps) if fps else (self.fps_range[1], self.fps_range[0])
        return low_frames / fastest, high_frames / slowest

    def describe_fps(self) -> str:
        low, high = self.fps_range
        return f"{low} fps only" if low == high else f"{low} to {high} fps"

    def describe_length(self, fps: int | None = None) -> str:
        if self.seconds_choices:
            return " or ".join(_secs(s) for s in self.seconds_choices) + " s clips"
        low, high = self.seconds_range(fps)
        frames = self.frames_range or (1, 1)
        at = f" at {fps} fps" if fps else ""
        return f"{_secs(low)} to {_secs(high)} s{at} ({frames[0]} to {frames[1]} frames)"

    def summary(self) -> str:
        """One line a user (or the model) can act on when a request is refused."""
        modes = [
            name
            for name, on in (
                ("text-to-video", self.text_to_video),
                ("image-to-video", self.image_to_video),
            )
            if on
        ]
        parts = [" and ".join(modes)]
        if self.length:
            parts += [self.describe_length(), self.describe_fps()]
        else:
            parts.append("length and frame rate chosen by the model")
        if self.sizes or self.size_range:
            sizes = ", ".join(self.sizes)
            if self.size_range:
                sizes += (" or " if sizes else "") + self.size_range.describe()
            parts.append(f"sizes {sizes}")
        else:
            parts.append("size chosen by the model")
        if self.seed:
            parts.append("seed")
        if self.prompt == "none":
            parts.append("no prompt (the motion comes from the image alone)")
        return "; ".join(parts)


@dataclass(frozen=True)
class VideoRequest:
    """Everything a tool can ask of a video backend; None means "the model's default".

    `image` is the first frame for image-to-video; without it the request is
    text-to-video.
    """

    prompt: str | None = None
    model: str | None = None
    image: InputImage | None = None
    seconds: float | None = None
    fps: int | None = None
    size: str | None = None
    seed: int | None = None
    steps: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        """Frames the clip should have; only meaningful once checked (seconds and fps set)."""
        return max(1, round((self.seconds or 0) * (self.fps or 0)))

    @property
    def width_height(self) -> tuple[int, int] | None:
        match = SIZE_PATTERN.match(self.size or "")
        return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class EncodedVideo:
    """A finished clip: MP4 bytes, a PNG poster, and figures measured from the file."""

    data: bytes
    poster: bytes
    width: int
    height: int
    frames: int
    fps: float
    seconds: float
    mime: str = "video/mp4"
    codec: str = "h264"


@dataclass(frozen=True)
class VideoResult:
    video: EncodedVideo
    backend: str
    model: str
    prompt_sent: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    seed_honoured: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


class VideoBackend(Protocol):
    """What the video tool calls; it looks backends up by id in the video registry.

    `generate` must refuse (via `check_video_request`) before spending anything, report
    progress through `progress` when given, and stop promptly when its task is cancelled
    or `progress.cancelled` is set.
    """

    id: str
    label: str
    default_model: str

    def capabilities(self, model: str | None = None) -> VideoCapabilities: ...

    def suggested_models(self) -> list[str]: ...

    async def generate(
        self, request: VideoRequest, progress: Progress | None = None
    ) -> VideoResult: ...


def _secs(value: float) -> str:
    return f"{value:.3g}"


def check_video_request(backend: VideoBackend, request: VideoRequest) -> VideoRequest:
    """Refuse what the model cannot do; fill unset options with the model's defaults."""
    model = (request.model or backend.default_model).strip()
    caps = backend.capabilities(model)
    label = f"{backend.label} {model}"
    _check_mode(label, caps, request)
    prompt = (request.prompt or "").strip() or None
    _check_prompt(label, caps, prompt, request.image is not None)
    if not caps.length and (request.seconds is not None or request.fps is not None):
        raise InvalidInput(
            f"Atelier does not know how {label} sets a clip's length or frame rate, so the "
            "model decides them; leave seconds and fps out (the clip is measured when it "
            "arrives)."
        )
    fps = request.fps if request.fps is not None else caps.default_fps
    low_fps, high_fps = caps.fps_range
    if isinstance(fps, bool) or not isinstance(fps, int) or not low_fps <= fps <= high_fps:
        raise InvalidInput(f"{label} makes clips at {caps.describe_fps()}; {fps!r} fps was asked.")
    seconds = request.seconds
    if seconds is None:
        seconds = caps.default_seconds
        if caps.frames_range:  # the default frame count, at the rate asked
            seconds = round(caps.default_seconds * caps.default_fps) / fps
    _check_seconds(label, caps, seconds, fps)
    size = request.size or (caps.sizes[0] if caps.sizes else None)
    if request.size is not None:
        _check_size(label, caps, request.size)
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise InvalidInput("A seed is a whole number from 0 to 2^63-1.")
    if request.steps is not None:
        if not caps.steps:
            raise InvalidInput(f"{label} does not take a step count. It can do: {caps.summary()}.")
        if not 1 <= request.steps <= caps.max_steps:
            raise InvalidInput(
                f"Steps must be from 1 to {caps.max_steps}; {request.steps} was asked."
            )
    return replace(request, model=model, prompt=prompt, fps=fps, seconds=seconds, size=size)


def _check_mode(label: str, caps: VideoCapabilities, request: VideoRequest) -> None:
    if request.image is not None and not caps.image_to_video:
        raise InvalidInput(
            f"{label} makes video from text only; it cannot start from an image. Leave the "
            "image out, or choose an image-to-video model."
        )
    if request.image is None and not caps.text_to_video:
        raise InvalidInput(
            f"{label} animates an image; it cannot make video from text alone. Give an "
            "image to start from, or choose a text-to-video model."
        )


def _check_prompt(label: str, caps: VideoCapabilities, prompt: str | None, image: bool) -> None:
    if prompt is None:
        if caps.prompt == "required" or not image:
            raise InvalidInput(f"{label} needs a prompt: describe what should happen in the clip.")
        return
    if caps.prompt == "none":
        raise InvalidInput(
            f"{label} takes no prompt: the motion comes from the image alone. Leave the prompt out."
        )
    if len(prompt) > caps.max_prompt_chars:
        raise InvalidInput(
            f"The prompt has {len(prompt):,} characters; {label} accepts at most "
            f"{caps.max_prompt_chars:,}."
        )


def _check_seconds(label: str, caps: VideoCapabilities, seconds: Any, fps: int) -> None:
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (math.isfinite(seconds) and seconds > 0)
    ):
        raise InvalidInput(f"A clip length is a number of seconds above 0, not {seconds!r}.")
    if caps.seconds_choices:
        if not any(math.isclose(seconds, choice) for choice in caps.seconds_choices):
            raise InvalidInput(
                f"{label} makes {caps.describe_length()}; {_secs(seconds)} s was asked."
            )
        return
    low, high = caps.frames_range or (1, 1)
    frames = round(seconds * fps)
    if not low <= frames <= high:
        raise InvalidInput(
            f"{label} makes clips of {caps.describe_length(fps)}; {_secs(seconds)} s "
            f"({frames} frames) was asked. Over its frame rates ({caps.describe_fps()}) "
            f"it makes {caps.describe_length()}."
        )


def _check_size(label: str, caps: VideoCapabilities, size: str) -> None:
    if size in caps.sizes:
        return
    match = SIZE_PATTERN.match(size)
    if caps.size_range and match and caps.size_range.allows(int(match[1]), int(match[2])):
        return
    if not caps.sizes and not caps.size_range:
        raise InvalidInput(
            f"{label} chooses the clip's size itself (from the input image or its own "
            "default); leave the size out."
        )
    valid = ", ".join(caps.sizes)
    if caps.size_range:
        valid += (", or " if valid else "") + caps.size_range.describe()
    raise InvalidInput(f"{label} cannot make {size} clips. Valid sizes: {valid}.")
