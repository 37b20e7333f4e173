"""Replicate video models through the real `replicate` client against the fake server.

Assertions read what the fake received (paths, JSON inputs) and the clip that came back,
decoded with imageio-ffmpeg; nothing mocks the client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import imageio_ffmpeg
import pytest
from PIL import Image

from core.errors import BackendFailed, InvalidInput, RateLimited
from core.logging_setup import configure_logging
from pipelines.downloads.guarded_fetch import DOWNLOAD_FAILED
from pipelines.images.base import InputImage
from pipelines.progress import Progress
from pipelines.video.replicate_video import ReplicateVideo
from pipelines.video.video_base import VideoRequest
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import fetch_policy_for

MINIMAX = "minimax/video-01"
KLING = "kwaivgi/kling-v2.1"
WAN_T2V = "wan-video/wan-2.2-t2v-fast"


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    configure_logging()  # see test_replicate_backend.py


@pytest.fixture
async def videos(fake_replicate: FakeReplicate) -> AsyncIterator[ReplicateVideo]:
    backend = ReplicateVideo(
        fake_replicate.api_token or "",
        base_url=fake_replicate.base_url,
        poll_interval_s=0.01,
        timeout_s=10.0,
        retry_backoff_s=0.01,
        fetch_policy=fetch_policy_for(fake_replicate, timeout_s=10.0),
    )
    yield backend
    await backend.aclose()


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> InputImage:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, "PNG")
    return InputImage(out.getvalue(), "image/png", width, height)


def frame_count(data: bytes, tmp_path: Any) -> tuple[tuple[int, int], int]:
    path = tmp_path / f"clip-{time.monotonic_ns()}.mp4"
    path.write_bytes(data)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    return tuple(meta["size"]), sum(1 for _ in reader)


def created(fake: FakeReplicate) -> tuple[str, dict[str, Any]]:
    (create,) = fake.creates()
    return create.path, create.json["input"]


async def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# --- Popular models, by their own input names ----------------------------------------------


async def test_minimax_text_to_video_from_a_served_url(videos, fake_replicate, tmp_path) -> None:
    result = await videos.generate(VideoRequest(prompt="a fox running through snow"))

    path, inputs = created(fake_replicate)
    assert path == "/v1/models/minimax/video-01/predictions"
    assert inputs == {"prompt": "a fox running through snow"}  # no seed input, no length
    assert fake_replicate.requests_to(r"^/files/\w+\.mp4$", "GET")  # downloaded from the fake
    video = result.video
    assert frame_count(video.data, tmp_path) == ((64, 36), 150)
    assert (video.frames, video.fps, video.seconds) == (150, 25.0, 6.0)
    assert Image.open(io.BytesIO(video.poster)).size == (64, 36)
    assert result.parameters["reencoded"] is False  # already H.264: kept byte for byte
    assert result.seed is None and not result.seed_honoured
    assert result.metrics["predict_time"] > 0


async def test_minimax_animates_a_first_frame_returned_as_a_data_uri(
    videos, fake_replicate, tmp_path
) -> None:
    fake_replicate.configure(output_mode="data")
    result = await videos.generate(VideoRequest(prompt="the fox turns its head", image=png(64, 96)))

    _path, inputs = created(fake_replicate)
    first_frame = inputs["first_frame_image"]
    assert first_frame.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(first_frame.partition(",")[2]))).size == (64, 96)
    assert not fake_replicate.requests_to(r"^/files/")  # nothing to download
    assert frame_count(result.video.data, tmp_path) == ((64, 96), 150)
    assert result.parameters["input"]["first_frame_image"].startswith("<image ")  # redacted


async def test_kling_sends_duration_and_start_image(videos, fake_replicate, tmp_path) -> None:
    result = await videos.generate(
        VideoRequest(prompt="waves roll in", model=KLING, image=png(64, 36), seconds=10)
    )

    path, inputs = created(fake_replicate)
    assert path == "/v1/models/kwaivgi/kling-v2.1/predictions"
    assert inputs["duration"] == 10 and inputs["start_image"].startswith("data:image/png")
    assert (result.video.frames, result.video.fps, result.video.seconds) == (240, 24.0, 10.0)


async def test_wan_sends_frames_rate_aspect_and_a_seed(videos, fake_replicate, tmp_path) -> None:
    result = await videos.generate(
        VideoRequest(
            prompt="a paper boat drifting", model=WAN_T2V, seconds=5, fps=18, size="480x832"
        )
    )

    _path, inputs = created(fake_replicate)
    assert inputs["num_frames"] == 90 and inputs["frames_per_second"] == 18
    assert inputs["aspect_ratio"] == "9:16"
    assert isinstance(inputs["seed"], int) and inputs["seed"] == result.seed  # drawn, recorded
    assert result.seed_honoured
    assert frame_count(result.video.data, tmp_path) == ((24, 40), 90)
    assert (result.video.fps, result.video.seconds) == (18.0, 5.0)


async def test_a_model_without_a_row_gets_the_generic_mapping(videos, fake_replicate) -> None:
    result = await videos.generate(
        VideoRequest(prompt="a comet", model="fake/any-video-model", seed=5)
    )

    path, inputs = created(fake_replicate)
    assert path == "/v1/models/fake/any-video-model/predictions"
    assert inputs == {"prompt": "a comet", "seed": 5}
    # The length is the model's own, measured from the file.
    assert (result.video.frames, result.video.fps, result.video.seconds) == (120, 24.0, 5.0)
    assert result.parameters["model_row"] == "generic"


# --- Refusals, before anything is sent ------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (VideoRequest(prompt="a fox", seconds=10), r"makes 6 s clips; 10 s was asked"),
        (VideoRequest(prompt="a fox", fps=30), "at 25 fps only; 30 fps was asked"),
        (
            VideoRequest(prompt="a fox", model=KLING),
            "animates an image; it cannot make video from text alone",
        ),
        (
            VideoRequest(prompt="a fox", model=KLING, image=png(64, 64), seconds=7),
            r"makes 5 or 10 s clips; 7 s was asked",
        ),
        (
            VideoRequest(prompt="a fox", model=WAN_T2V, image=png(64, 64)),
            "makes video from text only; it cannot start from an image",
        ),
        (
            VideoRequest(prompt="a fox", model=WAN_T2V, seconds=2),
            r"clips of 5\.06 to 6\.25 s at 16 fps \(81 to 100 frames\); 2 s \(32 frames\)",
        ),
        (VideoRequest(prompt="a fox", model=WAN_T2V, fps=30), "at 5 to 24 fps; 30 fps"),
        (VideoRequest(prompt="a fox", model=WAN_T2V, size="1024x576"), "Valid sizes: 832x480"),
        (VideoRequest(prompt="a fox", size="640x360"), "chooses the clip's size itself"),
        (VideoRequest(prompt=None), "needs a prompt"),
        (
            VideoRequest(prompt="a comet", model="fake/any-video-model", seconds=8),
            "leave seconds and fps out",
        ),
        (VideoRequest(prompt="a fox", model="not a model"), "not a Replicate model name"),
    ],
)
async def test_what_a_model_cannot_do_is_refused_before_any_request(
    videos, fake_replicate, request_: VideoRequest, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await videos.generate(request_)
    assert fake_replicate.creates() == []


# --- Failures and stopping ------------------------------------------------------------------


async def test_a_file_that_is_not_a_video_is_not_kept(videos, fake_replicate) -> None:
    # An image model asked through the video backend returns a PNG link: what answered at
    # a link is not the user's to learn, so it reads as any failed download.
    with pytest.raises(BackendFailed) as caught:
        await videos.generate(VideoRequest(prompt="a fox", model="black-forest-labs/flux-schnell"))
    assert caught.value.message == DOWNLOAD_FAILED
    # As a data: URI nothing was fetched, so the reason is given.
    fake_replicate.configure(output_mode="data")
    with pytest.raises(BackendFailed, match="not a usable video: .*single picture"):
        await videos.generate(VideoRequest(prompt="a fox", model="black-forest-labs/flux-schnell"))


async def test_a_failed_prediction_says_why(videos, fake_replicate) -> None:
    fake_replicate.fail_next("failed", message="CUDA out of memory")
    with pytest.raises(BackendFailed, match="failed on Replicate .*CUDA out of memory"):
        await videos.generate(VideoRequest(prompt="a fox"))


async def test_a_stop_cancels_the_prediction_on_replicate(videos, fake_replicate) -> None:
    fake_replicate.configure(processing_polls=100_000)
    progress = Progress()
    task = asyncio.create_task(videos.generate(VideoRequest(prompt="a slow heron"), progress))
    await wait_for(lambda: len(fake_replicate.requests_to(r"^/v1/predictions/\w+$")) >= 2)
    progress.cancel()
    with pytest.raises(BackendFailed, match="Stopped at your request"):
        await task
    (prediction,) = fake_replicate.predictions()
    assert prediction["status"] == "canceled"
    assert any(u.note.startswith("processing") for u in progress.history)


# --- Retries --------------------------------------------------------------------------------


async def test_a_rate_limited_video_waits_as_replicate_asks(videos, fake_replicate) -> None:
    # The backoff is 0.01 s here, so a second create a second later is the Retry-After.
    fake_replicate.fail_next("rate_limit", retry_after=1)
    progress = Progress()
    result = await videos.generate(VideoRequest(prompt="a fox"), progress)
    first, second = fake_replicate.creates()
    assert second.at - first.at >= 0.95 and result.video.data
    assert any("retrying in 1 s" in update.note for update in progress.history)


async def test_a_video_asked_to_wait_too_long_gives_up_at_once(videos, fake_replicate) -> None:
    fake_replicate.fail_next("rate_limit", retry_after=3600)
    with pytest.raises(RateLimited) as caught:
        await videos.generate(VideoRequest(prompt="a fox"))
    assert caught.value.retry_after_s == 3600
    assert "asks to wait 3600 s" in caught.value.message
    assert len(fake_replicate.creates()) == 1 and not fake_replicate.predictions()
