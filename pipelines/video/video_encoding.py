"""Frames to a web-playable MP4, and checking (or fixing) a video a provider sent back.

Browsers play H.264 in yuv420p everywhere; other codecs (H.265, VP9 in MP4, 4:4:4
chroma) play in some and show a black box in others. So local frames are encoded as
H.264/yuv420p with the index at the front (`+faststart`, so playback starts before the
whole file arrives), and a downloaded clip is kept byte for byte only when it already is
one; anything else is re-encoded. Either way the figures recorded (size, frame count,
rate, length) are read back from the file itself.

ffmpeg comes from the `imageio-ffmpeg` package, which ships its own static binary: no
system ffmpeg, and it works offline. It is imported inside the functions, so the chat
starts even where it is missing, and the error then names the package to install.
All functions block (ffmpeg runs as a subprocess): call them from a worker thread.
"""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import BackendNotConfigured, InvalidInput
from pipelines.video.video_base import EncodedVideo

CRF = 18  # H.264 quality: 18 looks lossless to most eyes; short clips stay small
MAX_FRAMES = 10_000  # ~7 minutes at 24 fps: far beyond any model's clip
MAX_SIDE = 4096
TRANSCODE_TIMEOUT_S = 600
_MP4_BRANDS = (b"ftyp",)


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reads from a file's header (frames are counted separately)."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    duration: float
    is_mp4: bool

    @property
    def web_playable(self) -> bool:
        return self.is_mp4 and self.codec == "h264" and self.pix_fmt.startswith("yuv420p")


def _ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise BackendNotConfigured(
            "Video needs the imageio-ffmpeg package (it ships its own ffmpeg): "
            "pip install imageio-ffmpeg"
        ) from exc
    return imageio_ffmpeg


@contextmanager
def _temp_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="atelier-video-") as folder:
        yield Path(folder)


def encode_mp4(frames: Sequence[Any], fps: float) -> EncodedVideo:
    """Encode PIL images (all one size) as H.264/yuv420p MP4 with a PNG poster.

    Odd sides are padded by one pixel (yuv420p needs even ones) rather than scaled, so
    the picture is never resampled.
    """
    from PIL import Image

    if not frames:
        raise InvalidInput("A video needs at least one frame.")
    if not 0 < fps <= 240:
        raise InvalidInput(f"A frame rate is above 0 and at most 240 fps, not {fps!r}.")
    first = frames[0].convert("RGB")
    width, height = first.size
    even = (width + width % 2, height + height % 2)
    ffmpeg = _ffmpeg()
    with _temp_dir() as folder:
        path = folder / "clip.mp4"
        writer = ffmpeg.write_frames(
            str(path),
            even,
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(CRF), "-movflags", "+faststart"],
        )
        writer.send(None)
        try:
            for frame in frames:
                rgb = frame.convert("RGB")
                if rgb.size != (width, height):
                    raise InvalidInput(
                        f"All frames of a video must be one size; got {rgb.size} after "
                        f"{(width, height)}."
                    )
                if rgb.size != even:
                    padded = Image.new("RGB", even)
                    padded.paste(rgb)
                    rgb = padded
                writer.send(rgb.tobytes())
        finally:
            writer.close()
        data = path.read_bytes()
    return EncodedVideo(
        data=data,
        poster=_png(first),
        width=even[0],
        height=even[1],
        frames=len(frames),
        fps=float(fps),
        seconds=len(frames) / fps,
    )


def probe(data: bytes) -> tuple[VideoInfo, bytes, int]:
    """(header figures, first frame as PNG, frame count) of a video file's bytes.

    Raises InvalidInput when the bytes are not a readable video.
    """
    ffmpeg = _ffmpeg()
    with _temp_dir() as folder:
        path = folder / "clip"
        path.write_bytes(data)
        try:
            reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
            meta = next(reader)
            width, height = (int(side) for side in meta["size"])
            if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
                reader.close()
                raise InvalidInput(f"The video is {width}x{height}; the limit is {MAX_SIDE}.")
            try:
                first = next(reader)
            except StopIteration:
                raise InvalidInput("The video has no frames.") from None
            finally:
                reader.close()
            frames, _seconds = ffmpeg.count_frames_and_secs(str(path))
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
            raise InvalidInput(f"The file is not a readable video ({reason}).") from None
    if (frames or 0) < 2:
        raise InvalidInput("The file holds a single picture, not a clip.")
    if frames > MAX_FRAMES:
        raise InvalidInput(f"The video has {frames:,} frames; at most {MAX_FRAMES:,} are accepted.")
    info = VideoInfo(
        codec=_first_word(meta.get("codec")),
        pix_fmt=_first_word(meta.get("pix_fmt")),
        width=width,
        height=height,
        fps=float(meta.get("fps") or 0),
        duration=float(meta.get("duration") or 0),
        is_mp4=data[4:8] in _MP4_BRANDS,
    )
    from PIL import Image

    poster = _png(Image.frombytes("RGB", (width, height), first))
    return info, poster, int(frames)


def web_playable(data: bytes) -> EncodedVideo:
    """A provider's clip as an H.264/yuv420p MP4: kept as is when it already is one."""
    info, poster, frames = probe(data)
    fps = info.fps if info.fps > 0 else (frames / info.duration if info.duration else 0)
    if fps <= 0:
        raise InvalidInput("The video does not say its frame rate.")
    if info.web_playable:
        return EncodedVideo(
            data=data,
            poster=poster,
            width=info.width,
            height=info.height,
            frames=frames,
            fps=round(fps, 3),
            seconds=round(frames / fps, 3),
        )
    return _transcoded(data)


def _transcoded(data: bytes) -> EncodedVideo:
    """Re-encode to H.264/yuv420p MP4 file to file: ffmpeg streams it, so a long or large
    clip never sits in memory as decoded frames. Odd sides get one pixel of padding;
    sound, if any, becomes AAC, which every browser plays."""
    ffmpeg = _ffmpeg()
    with _temp_dir() as folder:
        source, target = folder / "source", folder / "clip.mp4"
        source.write_bytes(data)
        command = [
            ffmpeg.get_ffmpeg_exe(),
            *("-v", "error", "-y", "-i", str(source)),
            *("-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"),
            *("-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(CRF)),
            *("-c:a", "aac", "-movflags", "+faststart", str(target)),
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=TRANSCODE_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            reason = (lines or ["ffmpeg failed"])[-1][:200]
            raise InvalidInput(f"The video could not be converted to H.264 ({reason}).") from None
        except subprocess.TimeoutExpired:
            raise InvalidInput(
                f"Converting the video to H.264 took over {TRANSCODE_TIMEOUT_S} s; it was dropped."
            ) from None
        converted = target.read_bytes()
    info, poster, frames = probe(converted)
    return EncodedVideo(
        data=converted,
        poster=poster,
        width=info.width,
        height=info.height,
        frames=frames,
        fps=round(info.fps, 3),
        seconds=round(frames / info.fps, 3),
    )


def _first_word(value: Any) -> str:
    """The leading word of an ffmpeg field: yuv420p(progressive) -> yuv420p."""
    return re.split(r"[\s(]", str(value or "").strip().lower(), maxsplit=1)[0]


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
