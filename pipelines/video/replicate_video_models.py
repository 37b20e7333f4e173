"""Replicate video models as data: what each can do and what its inputs are called.

Video models name their inputs even less alike than image models: the first frame is
`first_frame_image` (MiniMax), `start_image` (Kling) or `image` (Wan); the length is a
`duration` in seconds (Kling) or a `num_frames` count at `frames_per_second` (Wan), or
fixed (MiniMax video-01 always makes about 6 s at 25 fps). So a popular model is one row
here. A model without a row gets `GENERIC`: prompt, `image` and `seed`, its own length
and size, with Replicate judging what it accepts; its clip is measured when it arrives.

Input names, ranges and choices were read from the models' API pages on replicate.com
(2026).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.video.video_base import VideoCapabilities, VideoRequest

# Wan's two shapes at 480p (its pages: "16:9 corresponds to 832x480px").
WAN_ASPECTS: dict[str, str] = {"832x480": "16:9", "480x832": "9:16"}


@dataclass(frozen=True)
class VideoInputs:
    """The model's input name for each request field; None = it has no such input."""

    prompt: str | None = "prompt"
    image: str | None = None
    seconds: str | None = None  # length in whole seconds (Kling's `duration`)
    frames: str | None = None  # length as a frame count (Wan's `num_frames`)
    fps: str | None = None
    seed: str | None = None
    aspect_ratio: str | None = None
    aspect_ratios: Mapping[str, str] = field(default_factory=dict)  # "WxH" -> ratio sent
    fixed: Mapping[str, Any] = field(default_factory=dict)  # always sent


@dataclass(frozen=True)
class ReplicateVideoModel:
    capabilities: VideoCapabilities
    inputs: VideoInputs
    version: str | None = None  # pinned version, for models without an official endpoint
    max_seed: int = 2**31 - 1
    known: bool = True


MINIMAX_VIDEO_01 = ReplicateVideoModel(
    VideoCapabilities(
        text_to_video=True,
        image_to_video=True,
        fps_range=(25, 25),
        default_fps=25,
        default_seconds=6,
        seconds_choices=(6,),
    ),
    VideoInputs(image="first_frame_image"),
)
MINIMAX_VIDEO_01_LIVE = ReplicateVideoModel(
    VideoCapabilities(
        text_to_video=False,
        image_to_video=True,
        fps_range=(25, 25),
        default_fps=25,
        default_seconds=6,
        seconds_choices=(6,),
    ),
    VideoInputs(image="first_frame_image"),
)
# "You must use a start image with kling-v2.1"; "Both [modes] are 24fps".
KLING_V21 = ReplicateVideoModel(
    VideoCapabilities(
        text_to_video=False,
        image_to_video=True,
        fps_range=(24, 24),
        default_fps=24,
        default_seconds=5,
        seconds_choices=(5, 10),
    ),
    VideoInputs(image="start_image", seconds="duration"),
)


def _wan(min_frames: int, *, text: bool) -> ReplicateVideoModel:
    """Wan takes a frame count (min_frames to 100) at 5 to 24 fps and a seed; text-to-video
    also takes an aspect ratio, image-to-video follows its image."""
    capabilities = VideoCapabilities(
        text_to_video=text,
        image_to_video=not text,
        fps_range=(5, 24),
        default_fps=16,
        default_seconds=81 / 16,
        frames_range=(min_frames, 100),
        sizes=tuple(WAN_ASPECTS) if text else (),
        seed=True,
    )
    if text:
        inputs = VideoInputs(
            frames="num_frames",
            fps="frames_per_second",
            seed="seed",
            aspect_ratio="aspect_ratio",
            aspect_ratios=WAN_ASPECTS,
        )
    else:
        inputs = VideoInputs(
            image="image", frames="num_frames", fps="frames_per_second", seed="seed"
        )
    return ReplicateVideoModel(capabilities, inputs)


# Wan 2.2 (wan-video): 81 to 100 frames; Wan 2.1 (wavespeedai): 5 to 100 frames.
WAN_22_T2V = _wan(81, text=True)
WAN_22_I2V = _wan(81, text=False)
WAN_21_T2V = _wan(5, text=True)
WAN_21_I2V = _wan(5, text=False)

# A model without a row: the clip's length, rate and size are the model's own; the
# request may still say text or image, and a seed.
GENERIC = ReplicateVideoModel(
    VideoCapabilities(
        text_to_video=True,
        image_to_video=True,
        fps_range=(1, 120),
        default_fps=24,
        default_seconds=5,
        seconds_choices=(5,),
        length=False,
        seed=True,
        prompt="optional",
    ),
    VideoInputs(image="image", seed="seed"),
    known=False,
)

MODELS: dict[str, ReplicateVideoModel] = {
    "minimax/video-01": MINIMAX_VIDEO_01,
    "minimax/video-01-live": MINIMAX_VIDEO_01_LIVE,
    "kwaivgi/kling-v2.1": KLING_V21,
    "wan-video/wan-2.2-t2v-fast": WAN_22_T2V,
    "wan-video/wan-2.2-i2v-a14b": WAN_22_I2V,
    "wavespeedai/wan-2.1-t2v-480p": WAN_21_T2V,
    "wavespeedai/wan-2.1-i2v-480p": WAN_21_I2V,
    "wavespeedai/wan-2.1-i2v-720p": WAN_21_I2V,
}


def lookup(model: str) -> ReplicateVideoModel:
    """The row for 'owner/name[:version]' (the version does not change the inputs)."""
    return MODELS.get(model.strip().split(":", 1)[0].lower(), GENERIC)


def build_input(
    spec: ReplicateVideoModel,
    request: VideoRequest,
    *,
    seed: int | None,
    image_uri: str | None,
    length_given: bool,
) -> dict[str, Any]:
    """The `input` object for one prediction, from an already checked request.

    The length is sent only when the model has an input for it and the request set it
    (`length_given`), so an unasked default never overrides the model's own.
    """
    names = spec.inputs
    values: dict[str, Any] = dict(names.fixed)
    if names.prompt and request.prompt:
        values[names.prompt] = request.prompt
    optional: tuple[tuple[str | None, Any], ...] = (
        (names.image, image_uri),
        (names.seed, seed),
        (names.fps, request.fps if length_given else None),
        (names.frames, request.frames if length_given else None),
        (names.seconds, int(request.seconds or 0) if length_given else None),
    )
    for name, value in optional:
        if name is not None and value is not None:
            values[name] = value
    if names.aspect_ratio and request.size in names.aspect_ratios:
        values[names.aspect_ratio] = names.aspect_ratios[request.size or ""]
    return {**values, **request.extra}
