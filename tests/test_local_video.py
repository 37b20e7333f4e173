"""Local Stable Video Diffusion, run for real on a tiny random-weight pipeline from disk.

Everything goes through `LocalStableVideo.generate`: the pipeline is loaded by
`from_pretrained(folder)` as users' models are, denoised by diffusers' own SVD code,
decoded in chunks and encoded to MP4 by ffmpeg; the clip is then read back with
imageio-ffmpeg's reader. Only the weights are random and the frames 32x32.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import imageio_ffmpeg
import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.images.base import InputImage
from pipelines.images.local_diffusers import LocalDiffusers
from pipelines.images.registry import BackendRegistry
from pipelines.progress import Progress, ProgressUpdate
from pipelines.video.local_video import LocalStableVideo, _size_for_input, create_video_backend
from pipelines.video.video_base import VideoRequest
from pipelines.video.video_registry import VideoBackendRegistry
from tests.tiny_video import FRAMES

REPO = Path(__file__).resolve().parents[1]


def still(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> InputImage:
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (8, 8, 24, 24))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return InputImage(buffer.getvalue(), "image/png", *size)


def request(**overrides: object) -> VideoRequest:
    fields: dict[str, object] = {
        "image": still((200, 60, 30)),
        "size": "32x32",
        "fps": 4,
        "seconds": 1.0,
        "steps": 3,
        "seed": 7,
    }
    return VideoRequest(**{**fields, **overrides})  # type: ignore[arg-type]


def decoded(data: bytes, tmp_path: Path) -> tuple[dict, list[bytes]]:
    path = tmp_path / f"clip-{len(data)}.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return meta, list(reader)


@pytest.fixture
def backend(tiny_svd_dir: Path) -> Iterator[LocalStableVideo]:
    # pytest's base folder is the operator's models folder: the test models are inside it.
    local = LocalStableVideo(
        model=str(tiny_svd_dir),
        device="cpu",
        decode_chunk_size=2,
        models_dir=tiny_svd_dir.parent.parent,
    )
    yield local
    local.runner.shutdown()  # type: ignore[attr-defined]


class WatchedProgress(Progress):
    reached: asyncio.Event


def progress_reaching(done: int) -> WatchedProgress:
    """A Progress whose `reached` event is set once denoising reports step `done`."""
    reached = asyncio.Event()

    async def watch(update: ProgressUpdate) -> None:
        if update.note in ("denoising", "decoding frames") and update.done >= done:
            reached.set()

    progress = WatchedProgress(watch)
    progress.reached = reached
    return progress


# --- Making clips ---------------------------------------------------------------------


async def test_four_frames_through_the_real_pipeline_decode_back(
    backend: LocalStableVideo, tmp_path: Path
) -> None:
    progress = Progress()
    result = await backend.generate(request(), progress)

    video = result.video
    meta, frames = decoded(video.data, tmp_path)
    assert len(frames) == 4 == video.frames
    assert tuple(meta["size"]) == (32, 32) == (video.width, video.height)
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    assert (video.fps, video.seconds, video.mime) == (4.0, 1.0, "video/mp4")
    assert Image.open(io.BytesIO(video.poster)).size == (32, 32)
    assert result.seed == 7 and result.seed_honoured
    assert result.prompt_sent is None  # SVD takes no text
    params = result.parameters
    assert (params["task"], params["frames"], params["fps"], params["steps"]) == (
        "img2vid",
        4,
        4,
        3,
    )
    assert params["decode_chunk_size"] == 2  # the VAE decoded two frames at a time
    assert (params["device"], params["dtype"]) == ("cpu", "float32")
    steps = [
        (u.done, u.total) for u in progress.history if u.note in ("denoising", "decoding frames")
    ]
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert progress.history[0].note.startswith("loading ")
    assert progress.history[-1].note == "encoding 4 frames"


async def test_same_seed_same_clip_other_seed_or_image_another(
    backend: LocalStableVideo, tmp_path: Path
) -> None:
    first = await backend.generate(request(seed=11))
    again = await backend.generate(request(seed=11))
    other_seed = await backend.generate(request(seed=12))
    other_image = await backend.generate(request(seed=11, image=still((20, 60, 200))))

    frames = {
        name: decoded(r.video.data, tmp_path)[1]
        for name, r in (
            ("first", first),
            ("again", again),
            ("seed", other_seed),
            ("image", other_image),
        )
    }
    assert frames["first"] == frames["again"]
    assert frames["first"] != frames["seed"]
    assert frames["first"] != frames["image"]


async def test_frame_rate_and_length_set_the_frame_count(
    backend: LocalStableVideo, tmp_path: Path
) -> None:
    two = await backend.generate(request(seconds=0.25, fps=8))  # 2 frames
    default = await backend.generate(request(seconds=None, fps=None, steps=2))

    assert len(decoded(two.video.data, tmp_path)[1]) == 2
    assert two.video.fps == 8.0
    # Unasked, the clip has the model's own frame count at SVD's default 7 fps.
    assert (default.video.frames, default.video.fps) == (FRAMES, 7.0)


async def test_user_stop_through_progress_ends_the_job_early(backend: LocalStableVideo) -> None:
    await backend.generate(request())  # loaded, so steps start at once
    progress = progress_reaching(1)
    task = asyncio.create_task(backend.generate(request(steps=40), progress))
    await asyncio.wait_for(progress.reached.wait(), 30)
    progress.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert max(u.done for u in progress.history) < 10
    assert not any(u.note.startswith("encoding") for u in progress.history)
    assert (await backend.generate(request())).video.frames == 4  # the device is free again


async def test_cancelling_the_task_stops_within_a_step_or_two(backend: LocalStableVideo) -> None:
    await backend.generate(request())
    progress = progress_reaching(2)
    task = asyncio.create_task(backend.generate(request(steps=40), progress))
    await asyncio.wait_for(progress.reached.wait(), 30)
    stopped_at = progress.latest.done if progress.latest else 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert progress.cancelled
    assert max(u.done for u in progress.history) <= stopped_at + 2


# --- Refusals, before anything loads -----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seconds": 2.0}, r"clips of 0\.5 to 1 s at 4 fps \(2 to 4 frames\); 2 s \(8 frames\)"),
        ({"fps": 60}, "at 3 to 30 fps; 60 fps was asked"),
        ({"seconds": 0}, "above 0"),
        ({"image": None}, "animates an image; it cannot make video from text alone"),
        ({"prompt": "a fox running"}, "takes no prompt"),
        ({"size": "1000x1000"}, "Valid sizes: 1024x576, 576x1024, 768x768, or any"),
        ({"size": "36x36"}, "cannot make 36x36 clips"),
        ({"steps": 500}, "Steps must be from 1 to 100"),
    ],
)
async def test_requests_the_model_cannot_honour_are_refused(
    backend: LocalStableVideo, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await backend.generate(request(**overrides))


async def test_a_folder_that_is_not_an_svd_pipeline_is_explained(
    backend: LocalStableVideo, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="Could not load a Stable Video Diffusion pipeline"):
        await backend.generate(request(model=str(tiny_sd_dir)))
    with pytest.raises(InvalidInput, match="does not exist"):
        await backend.generate(request(model=str(tmp_path / "nope" / "svd")))


def test_capabilities_come_from_the_model() -> None:
    local = LocalStableVideo()
    xt = local.capabilities("stabilityai/stable-video-diffusion-img2vid-xt")
    plain = local.capabilities("stabilityai/stable-video-diffusion-img2vid")
    assert (xt.frames_range, plain.frames_range) == ((2, 25), (2, 14))
    assert xt.image_to_video and not xt.text_to_video and xt.prompt == "none"
    assert xt.seconds_range(7) == (2 / 7, 25 / 7)
    assert "image-to-video" in xt.summary() and "3 to 30 fps" in xt.summary()


def test_input_without_size_keeps_its_shape_at_svd_area() -> None:
    assert _size_for_input(InputImage(b"", "image/png", 1024, 1024)) == "768x768"
    assert _size_for_input(InputImage(b"", "image/png", 1920, 1080)) == "1024x576"
    wide, tall = (
        int(s) for s in _size_for_input(InputImage(b"", "image/png", 900, 1600)).split("x")
    )
    assert wide % 8 == 0 and tall % 8 == 0 and wide * tall <= 1024 * 576 and tall > wide


# --- Wiring ---------------------------------------------------------------------------


def test_video_and_image_jobs_share_one_queue_per_machine(tmp_path: Path) -> None:
    settings = SimpleNamespace(
        local_enabled=True,
        local_model="stabilityai/sd-turbo",
        local_video_model="stabilityai/stable-video-diffusion-img2vid-xt",
        local_device="cpu",
        resolved_lora_dir=tmp_path,
        local_models_dir=None,
        replicate_api_token=None,
    )
    images = BackendRegistry({"local": LocalDiffusers(device="cpu")})
    videos = VideoBackendRegistry.from_settings(settings, images)
    local = videos.get("local")
    assert local.runner is images.get("local").runner  # type: ignore[attr-defined]
    assert (
        create_video_backend(SimpleNamespace(**{**vars(settings), "local_enabled": False})) is None
    )


def test_importing_video_modules_does_not_import_torch() -> None:
    code = (
        "import pipelines.video.video_registry, pipelines.video.local_video, "
        "pipelines.video.replicate_video, "
        "pipelines.video.video_encoding, tools.generate_video, tools.registry, sys; "
        "heavy = {'torch', 'diffusers', 'transformers', 'imageio_ffmpeg'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
