"""Video models for the fake Replicate server: their input checks and their MP4 outputs.

Each mapped model answers as on replicate.com: MiniMax video-01 makes 6 s at 25 fps,
Kling 2.1 `duration` seconds at 24 fps and insists on a `start_image`, Wan `num_frames`
at `frames_per_second`. Clips are real H.264 MP4s (written with imageio-ffmpeg), but at
1/20 of the real size (64x36 for 1280x720) so tests stay fast. Frames are the prompt's
picture (or the inverted first frame), sliding sideways a pixel a frame, so a clip
depends on its prompt, seed and source, and motion is visible.
"""

from __future__ import annotations

import base64
import binascii
import io
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageOps

from tests.fakes.openai_server import make_image

SCALE = 20
# model -> (kind, fps); the length comes from the kind's own input.
VIDEO_MODELS: dict[str, tuple[str, int]] = {
    "minimax/video-01": ("minimax", 25),
    "minimax/video-01-live": ("minimax", 25),
    "kwaivgi/kling-v2.1": ("kling", 24),
    "wan-video/wan-2.2-t2v-fast": ("wan", 16),
    "wan-video/wan-2.2-i2v-a14b": ("wan", 16),
    "wavespeedai/wan-2.1-t2v-480p": ("wan", 16),
    "wavespeedai/wan-2.1-i2v-480p": ("wan", 16),
    "fake/any-video-model": ("generic", 24),  # a model Atelier has no row for
}
FIRST_FRAME_INPUTS = ("first_frame_image", "start_image", "image")
_WAN_ASPECTS = {"16:9": (832, 480), "9:16": (480, 832)}


class VideoInputError(ValueError):
    """(field, description): what a Cog schema would answer with a 422."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(description)
        self.field, self.description = field, description


def is_video(model: str) -> bool:
    return model in VIDEO_MODELS


def validate(model: str, inputs: dict[str, Any]) -> None:
    """The checks the real models' schemas make (a representative few)."""
    if model not in VIDEO_MODELS:
        return
    kind, _fps = VIDEO_MODELS[model]
    if kind == "kling":
        if "start_image" not in inputs:
            raise VideoInputError("input.start_image", "You must use a start image")
        if inputs.get("duration", 5) not in (5, 10):
            raise VideoInputError("input.duration", "duration must be one of: 5, 10")
    if kind == "wan":
        frames = inputs.get("num_frames", 81)
        low = 81 if model.startswith("wan-video/") else 5
        if not isinstance(frames, int) or not low <= frames <= 100:
            raise VideoInputError("input.num_frames", f"Must be between {low} and 100")
        fps = inputs.get("frames_per_second", 16)
        if not isinstance(fps, int) or not 5 <= fps <= 24:
            raise VideoInputError("input.frames_per_second", "Must be between 5 and 24")


def _plan(model: str, inputs: dict[str, Any]) -> tuple[int, int]:
    """(frames, fps) of the clip the real model would make."""
    kind, fps = VIDEO_MODELS[model]
    if kind == "minimax":
        frames = 6 * fps
    elif kind == "kling":
        frames = int(inputs.get("duration", 5)) * fps
    elif kind == "wan":
        fps = int(inputs.get("frames_per_second", 16))
        frames = int(inputs.get("num_frames", 81))
    else:
        frames = 5 * fps
    return frames, fps


def _source(inputs: dict[str, Any]) -> Image.Image | None:
    value = next((inputs[k] for k in FIRST_FRAME_INPUTS if k in inputs), None)
    if not isinstance(value, str) or not value.startswith("data:"):
        return None
    try:
        data = base64.b64decode(value.partition(",")[2], validate=True)
        return Image.open(io.BytesIO(data)).convert("RGB")
    except (binascii.Error, OSError):
        return None


def clip(model: str, inputs: dict[str, Any], seed: int) -> bytes:
    """An H.264 MP4 as the model would return it, at 1/SCALE of its size."""
    import imageio_ffmpeg

    source = _source(inputs)
    frames, fps = _plan(model, inputs)
    if source is not None:
        width = 64
        height = max(2, round(width * source.height / source.width / 2) * 2)
        base = ImageOps.invert(source).resize((width, height))
    else:
        full = _WAN_ASPECTS.get(str(inputs.get("aspect_ratio")), (1280, 720))
        width, height = (max(2, side // SCALE // 2 * 2) for side in full)
        base = make_image(f"{inputs.get('prompt')}|{seed}", 0, width, height).convert("RGB")
    with tempfile.TemporaryDirectory(prefix="fake-replicate-") as folder:
        path = Path(folder) / "clip.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=2,
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        writer.send(None)
        try:
            for index in range(frames):
                writer.send(ImageChops.offset(base, index, 0).tobytes())
        finally:
            writer.close()
        return path.read_bytes()
