"""MP4 encoding and checking, with the real ffmpeg that imageio-ffmpeg ships.

Every clip is decoded back with imageio-ffmpeg's reader: the frame count, size, codec
and pixel format asserted are what a browser would get, not what the encoder was told.
"""

from __future__ import annotations

import io
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.video.video_encoding import encode_mp4, probe, web_playable


def frames(count: int, size: tuple[int, int] = (32, 32)) -> list[Image.Image]:
    """Frames that differ (a bar moving right), so an encoder cannot merge them."""
    out = []
    for index in range(count):
        frame = Image.new("RGB", size, (20, 40, 60))
        frame.paste((250, 200, 0), (index * 4, 0, index * 4 + 4, size[1]))
        out.append(frame)
    return out


def read_back(data: bytes, tmp_path: Path) -> tuple[dict, list[bytes]]:
    path = tmp_path / "clip"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, list(reader)


def test_frames_become_an_h264_mp4_that_decodes_back(tmp_path: Path) -> None:
    video = encode_mp4(frames(4), fps=4)

    meta, decoded = read_back(video.data, tmp_path)
    assert len(decoded) == 4
    assert tuple(meta["size"]) == (32, 32)
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 4
    assert video.data[4:8] == b"ftyp"  # an MP4 container
    assert (video.width, video.height, video.frames, video.fps, video.seconds) == (
        32,
        32,
        4,
        4.0,
        1.0,
    )
    poster = Image.open(io.BytesIO(video.poster))
    assert poster.format == "PNG" and poster.size == (32, 32)
    assert poster.getpixel((1, 1)) == (250, 200, 0)  # the first frame, bar at the left


def test_odd_sizes_are_padded_to_even_not_scaled(tmp_path: Path) -> None:
    video = encode_mp4(frames(3, (33, 21)), fps=8)

    meta, decoded = read_back(video.data, tmp_path)
    assert tuple(meta["size"]) == (34, 22) == (video.width, video.height)
    assert len(decoded) == 3


def test_probe_reads_the_file_itself() -> None:
    video = encode_mp4(frames(5), fps=10)

    info, poster, count = probe(video.data)
    assert (info.codec, info.pix_fmt, info.is_mp4, info.web_playable) == (
        "h264",
        "yuv420p",
        True,
        True,
    )
    assert (info.width, info.height, info.fps, count) == (32, 32, 10.0, 5)
    assert Image.open(io.BytesIO(poster)).size == (32, 32)


def test_a_playable_clip_is_kept_byte_for_byte() -> None:
    data = encode_mp4(frames(4), fps=4).data

    kept = web_playable(data)
    assert kept.data == data
    assert (kept.frames, kept.fps, kept.seconds) == (4, 4.0, 1.0)


def test_other_codecs_are_reencoded_to_h264(tmp_path: Path) -> None:
    """A VP9 WebM (what some models return) plays in Chrome but not in Safari."""
    path = tmp_path / "clip.webm"
    writer = imageio_ffmpeg.write_frames(
        str(path), (32, 32), fps=8, codec="libvpx-vp9", macro_block_size=1
    )
    writer.send(None)
    for frame in frames(6):
        writer.send(frame.tobytes())
    writer.close()
    webm = path.read_bytes()
    assert not probe(webm)[0].web_playable

    fixed = web_playable(webm)
    info, _poster, count = probe(fixed.data)
    assert (info.codec, info.pix_fmt, info.is_mp4) == ("h264", "yuv420p", True)
    assert count == fixed.frames == 6
    assert fixed.fps == 8.0
    meta, decoded = read_back(fixed.data, tmp_path)
    assert len(decoded) == 6 and tuple(meta["size"]) == (32, 32)


def test_what_is_not_a_video_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not a readable video"):
        probe(b"\x00\x00\x00\x18ftypmp42 but then nothing useful")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(InvalidInput, match="single picture"):
        web_playable(png.getvalue())  # ffmpeg reads a PNG as a one-frame "video"


def test_frames_must_share_one_size() -> None:
    with pytest.raises(InvalidInput, match="one size"):
        encode_mp4([*frames(2), *frames(1, (16, 16))], fps=4)
    with pytest.raises(InvalidInput, match="at least one frame"):
        encode_mp4([], fps=4)
