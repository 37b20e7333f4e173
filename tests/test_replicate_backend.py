"""The Replicate backend through the real `replicate` client against the fake server.

Assertions read what the fake received (paths, JSON bodies, timing) and what the backend
returned; nothing here mocks the client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from PIL import Image
from replicate.helpers import FileOutput
from replicate.version import Versions

from chat_app.settings import Settings
from core.errors import (
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    QuotaExhausted,
    RateLimited,
)
from core.logging_setup import configure_logging
from pipelines.downloads.guarded_fetch import DOWNLOAD_FAILED
from pipelines.images import replicate_images, replicate_models
from pipelines.images.base import ImageRequest, InputImage
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages, create_backend
from pipelines.progress import Progress
from tests.fakes.replicate_server import DEFAULT_TOKEN, FakeReplicate
from tests.replicate_fixtures import fetch_policy_for

REPO = Path(__file__).resolve().parents[1]
SCHNELL = "black-forest-labs/flux-schnell"
SDXL = "stability-ai/sdxl"


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    # configure_logging binds the sys.stderr of the moment; under pytest that may be an
    # earlier test's capture file, closed since, and the backend logs each prediction.
    configure_logging()


def backend(fake: FakeReplicate, model: str = SCHNELL, **options: Any) -> ReplicateImages:
    settings: dict[str, Any] = {
        "base_url": fake.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
        "fetch_policy": fetch_policy_for(fake, timeout_s=10.0),
    }
    token = options.pop("token", fake.api_token)
    return ReplicateImages(token, model, **{**settings, **options})


def png(width: int, height: int, colour: tuple[int, ...] = (200, 30, 30), mode: str = "RGB"):
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, "PNG")
    return InputImage(out.getvalue(), "image/png", width, height)


def data_uri_bytes(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.partition(",")[2])


def create_input(fake: FakeReplicate) -> dict[str, Any]:
    (create,) = fake.creates()
    return create.json["input"]


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------------- success


async def test_generates_reports_progress_and_records_the_prediction(fake_replicate):
    fake_replicate.configure(starting_polls=1, processing_polls=2)
    progress = Progress()
    result = await backend(fake_replicate).generate(
        ImageRequest("a heron at dawn", n=2, seed=7), progress
    )

    (create,) = fake_replicate.creates()
    assert create.path == f"/v1/models/{SCHNELL}/predictions"
    assert create.authorized and "prefer" not in create.headers
    sent = {
        "prompt": "a heron at dawn",
        "aspect_ratio": "1:1",
        "num_outputs": 2,
        "seed": 7,
        "output_format": "png",
    }
    assert create.json == {"input": sent}
    polls = fake_replicate.requests_to(r"^/v1/predictions/\w+$", "GET")
    assert len(polls) == 4  # starting, processing x2, succeeded
    downloads = fake_replicate.requests_to(r"^/files/", "GET")
    assert len(downloads) == 2
    assert not any(d.authorized for d in downloads)  # the token stays with the API
    assert create.headers["user-agent"].startswith("replicate-python/")

    assert [(i.width, i.height, i.mime, i.seed) for i in result.images] == [
        (1024, 1024, "image/png", 7)
    ] * 2
    assert result.images[0].data != result.images[1].data
    (prediction,) = fake_replicate.predictions()
    assert result.parameters["input"] == sent
    assert result.parameters["prediction_id"] == prediction["id"]
    assert result.parameters["replicate_model"] == SCHNELL
    assert result.metrics["predict_time"] > 0
    assert result.seed_honoured and result.backend == "replicate" and result.model == SCHNELL

    notes = [update.note for update in progress.history]
    assert "starting (waiting for a Replicate worker)" in notes
    assert "processing 33%" in notes and "processing 67%" in notes
    assert notes[-1] == "downloading 2 image(s)"
    assert progress.history[-1].done == 100


async def test_model_without_num_outputs_answers_a_single_link(fake_replicate):
    result = await backend(fake_replicate, "black-forest-labs/flux-1.1-pro").generate(
        ImageRequest("a lighthouse", size="512x768", output_format="webp")
    )
    sent = create_input(fake_replicate)
    assert sent["aspect_ratio"] == "custom" and (sent["width"], sent["height"]) == (512, 768)
    assert sent["output_format"] == "webp" and "num_outputs" not in sent
    assert isinstance(fake_replicate.predictions()[0]["output"], str)
    (image,) = result.images
    assert (image.width, image.height, image.mime) == (512, 768, "image/webp")


async def test_data_uri_outputs_are_decoded_without_downloading(fake_replicate):
    fake_replicate.configure(output_mode="data")
    result = await backend(fake_replicate).generate(ImageRequest("a fox", n=3, seed=1))
    assert fake_replicate.predictions()[0]["output"][0].startswith("data:image/png;base64,")
    assert len(result.images) == 3
    assert not fake_replicate.requests_to(r"^/files/")


async def test_file_outputs_plain_links_and_data_uris_are_all_read(fake_replicate):
    await backend(fake_replicate).generate(ImageRequest("a fox", seed=1))
    (link,) = [f"{fake_replicate.base_url}{r.path}" for r in fake_replicate.requests_to("^/files/")]
    client = replicate.Client(fake_replicate.api_token, base_url=fake_replicate.base_url)
    data_uri = "data:image/png;base64," + base64.b64encode(png(8, 8).data).decode()
    outputs = [FileOutput(link, client), link, FileOutput(data_uri, client), data_uri]
    urls = replicate_images._output_urls(outputs, "Replicate test")
    assert urls == [link, link, data_uri, data_uri]
    assert replicate_images._output_urls(link, "Replicate test") == [link]
    with pytest.raises(BackendFailed, match="not an image link"):
        replicate_images._output_urls({"image": link}, "Replicate test")
    with pytest.raises(BackendFailed, match="without any image"):
        replicate_images._output_urls(None, "Replicate test")


async def test_an_output_that_is_not_an_image_fails_clearly(fake_replicate):
    b = backend(fake_replicate)
    files = b._connect().files
    junk = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    with pytest.raises(BackendFailed, match="not a usable image"):
        await b._download_all(files, [junk], "Replicate test", None)
    gone = f"{fake_replicate.base_url}/files/expired.png"
    with pytest.raises(BackendFailed) as caught:  # what answered is not the user's to learn
        await b._download_all(files, [gone], "Replicate test", None)
    assert caught.value.message == DOWNLOAD_FAILED


# --------------------------------------------------------------------------- endings


@pytest.mark.parametrize(
    ("kind", "message", "error", "words"),
    [
        ("failed", "CUDA out of memory", BackendFailed, "failed on Replicate"),
        ("nsfw", None, ContentRefused, "NSFW content"),
        ("failed", "Flagged as sensitive (E005)", ContentRefused, "safety filter"),
        ("canceled", None, BackendFailed, "was canceled before it finished"),
    ],
)
async def test_predictions_that_end_badly_become_specific_errors(
    fake_replicate, kind, message, error, words
):
    fake_replicate.fail_next(kind, message=message)
    with pytest.raises(error) as caught:
        await backend(fake_replicate).generate(ImageRequest("a heron"))
    assert words in caught.value.message
    if message:
        assert message in caught.value.message
    assert fake_replicate.predictions()[0]["status"] == (
        "canceled" if kind == "canceled" else "failed"
    )


async def test_stopping_the_task_cancels_the_prediction_on_replicate(fake_replicate):
    fake_replicate.configure(processing_polls=100_000)
    task = asyncio.create_task(backend(fake_replicate).generate(ImageRequest("a slow heron")))
    await wait_for(lambda: len(fake_replicate.requests_to(r"^/v1/predictions/\w+$")) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (prediction,) = fake_replicate.predictions()
    cancels = fake_replicate.requests_to(rf"^/v1/predictions/{prediction['id']}/cancel$", "POST")
    assert len(cancels) == 1 and prediction["status"] == "canceled"


async def test_progress_cancel_stops_and_cancels_the_prediction(fake_replicate):
    fake_replicate.configure(processing_polls=100_000)
    progress = Progress()
    task = asyncio.create_task(
        backend(fake_replicate, poll_interval_s=0.5).generate(ImageRequest("a heron"), progress)
    )
    await wait_for(lambda: len(fake_replicate.requests_to(r"^/v1/predictions/\w+$")) >= 1)
    started = time.monotonic()
    progress.cancel()  # as the chat's stop button does, from any thread
    with pytest.raises(BackendFailed, match="Stopped at your request"):
        await task
    assert time.monotonic() - started < 0.4  # noticed within a sleep slice, not a poll
    (prediction,) = fake_replicate.predictions()
    assert prediction["status"] == "canceled"
    assert fake_replicate.requests_to(r"/cancel$", "POST")


async def test_stopping_while_the_create_is_in_flight_cancels_what_it_started(fake_replicate):
    fake_replicate.latency_s = 0.3
    task = asyncio.create_task(backend(fake_replicate).generate(ImageRequest("a heron")))
    await wait_for(lambda: bool(fake_replicate.creates()))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (prediction,) = fake_replicate.predictions()
    assert prediction["status"] == "canceled"
    assert fake_replicate.requests_to(rf"^/v1/predictions/{prediction['id']}/cancel$", "POST")


# --------------------------------------------------------------------------- retries


async def test_rate_limit_on_create_waits_as_asked_then_succeeds(fake_replicate):
    fake_replicate.fail_next("rate_limit", retry_after=1)
    progress = Progress()
    result = await backend(fake_replicate).generate(ImageRequest("a heron"), progress)
    first, second = fake_replicate.creates()
    assert 0.95 <= second.at - first.at < 1.8
    assert len(result.images) == 1
    assert any("retrying in 1 s" in update.note for update in progress.history)


async def test_rate_limit_asking_too_long_a_wait_gives_up_at_once(fake_replicate):
    fake_replicate.fail_next("rate_limit", retry_after=3600)
    started = time.monotonic()
    with pytest.raises(RateLimited) as caught:
        await backend(fake_replicate).generate(ImageRequest("a heron"))
    assert time.monotonic() - started < 1.0
    assert caught.value.retry_after_s == 3600
    assert "asks to wait 3600 s" in caught.value.message
    assert len(fake_replicate.creates()) == 1


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("server_error", BackendUnavailable, "HTTP 500 after 3 attempt(s)"),
        ("rate_limit", RateLimited, "HTTP 429 after 3 attempt(s); it last asked to wait 0.05 s"),
    ],
)
async def test_create_failures_are_retried_until_retries_run_out(
    fake_replicate, kind, error, words
):
    fake_replicate.fail_next(kind, times=5, retry_after=0.05 if kind == "rate_limit" else None)
    with pytest.raises(error) as caught:
        await backend(fake_replicate, max_retries=2).generate(ImageRequest("a heron"))
    assert words in caught.value.message
    assert len(fake_replicate.creates()) == 3
    assert not fake_replicate.predictions()


async def test_out_of_credit_is_not_retried(fake_replicate):
    fake_replicate.fail_next("payment")
    with pytest.raises(QuotaExhausted, match="out of credit"):
        await backend(fake_replicate).generate(ImageRequest("a heron"))
    assert len(fake_replicate.creates()) == 1


async def test_a_wrong_token_is_reported_without_echoing_it(fake_replicate):
    secret = "r8_this_is_the_wrong_secret_value"
    with pytest.raises(BackendNotConfigured) as caught:
        await backend(fake_replicate, token=secret).generate(ImageRequest("a heron"))
    assert "REPLICATE_API_TOKEN" in caught.value.message
    assert secret not in caught.value.message and secret not in str(caught.value)
    assert len(fake_replicate.creates()) == 1 and not fake_replicate.creates()[0].authorized


# --------------------------------------------------------------------------- models


async def test_a_version_reference_uses_the_version_endpoint(fake_replicate):
    version = "a1" * 32
    result = await backend(fake_replicate, f"acme/painter:{version}").generate(
        ImageRequest("a heron", size="64x64")
    )
    (create,) = fake_replicate.creates()
    assert create.path == "/v1/predictions"
    assert create.json["version"] == version
    assert create.json["input"]["width"] == 64
    assert result.parameters["version"] == version
    assert result.model == f"acme/painter:{version}"


async def test_sdxl_runs_on_its_pinned_version(fake_replicate):
    result = await backend(fake_replicate, SDXL).generate(
        ImageRequest(
            "a heron",
            size="512x512",
            negative_prompt="blurry",
            steps=20,
            guidance=7.5,
            scheduler="K_EULER",
        )
    )
    (create,) = fake_replicate.creates()
    assert create.path == "/v1/predictions"
    assert create.json["version"] == replicate_models.SDXL_VERSION
    sent = create.json["input"]
    assert {k: sent[k] for k in ("negative_prompt", "num_inference_steps", "guidance_scale")} == {
        "negative_prompt": "blurry",
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
    }
    assert sent["scheduler"] == "K_EULER" and "output_format" not in sent
    assert result.parameters["replicate_model"] == SDXL


@pytest.mark.parametrize(
    "model", ["flux-schnell", "a/b/c", "owner/name:v1", "owner/name:", " /name", "owner/ name"]
)
async def test_malformed_model_names_are_refused_before_sending(fake_replicate, model):
    with pytest.raises(InvalidInput, match="Replicate"):
        await backend(fake_replicate, model).generate(ImageRequest("a heron"))
    assert not fake_replicate.requests


async def test_an_unknown_model_is_named_in_the_error(fake_replicate):
    with pytest.raises(InvalidInput) as caught:
        await backend(fake_replicate, "acme/does-not-exist").generate(
            ImageRequest("a heron", size="64x64")
        )
    assert "Replicate has no model acme/does-not-exist" in caught.value.message


async def test_replicates_validation_detail_reaches_the_user(fake_replicate):
    with pytest.raises(InvalidInput) as caught:
        await backend(fake_replicate, "acme/painter").generate(ImageRequest("x", size="100x100"))
    assert "Must be a multiple of 8" in caught.value.message


@pytest.mark.parametrize(
    ("model", "request_", "words"),
    [
        (SCHNELL, ImageRequest("x", size="1000x1000"), "Valid sizes: 1024x1024, 1344x768"),
        (SCHNELL, ImageRequest("x", n=5), "1 to 4 images per request; 5 was asked"),
        ("black-forest-labs/flux-1.1-pro", ImageRequest("x", n=2), "1 to 1 images"),
        (SCHNELL, ImageRequest("x", steps=8), "Steps must be from 1 to 4"),
        (SCHNELL, ImageRequest("x", negative_prompt="blur"), "does not take a negative prompt"),
        ("black-forest-labs/flux-dev", ImageRequest("x", guidance=12), "guidance from 0 to 10"),
        ("black-forest-labs/flux-dev", ImageRequest("x", strength=0.5), "input image"),
        ("ideogram-ai/ideogram-v3-turbo", ImageRequest("x", seed=2**31), "seeds from 0 to"),
        (SCHNELL, ImageRequest("x", extra={"aspect_ratio": "4:3"}), "already set"),
        (SCHNELL, ImageRequest("x", extra={"go_fast": {1, 2}}), "plain JSON"),
    ],
)
async def test_requests_a_model_cannot_honour_are_refused_before_sending(
    fake_replicate, model, request_, words
):
    with pytest.raises(InvalidInput) as caught:
        await backend(fake_replicate, model).generate(request_)
    assert words in caught.value.message
    assert not fake_replicate.requests


async def test_extra_inputs_pass_through_untouched(fake_replicate):
    extra = {"style": "ink", "lora_scale": 0.5, "tags": ["a", "b"]}
    result = await backend(fake_replicate, "acme/painter").generate(
        ImageRequest("a heron", size="64x64", seed=3, extra=extra)
    )
    sent = create_input(fake_replicate)
    assert sent == {
        "prompt": "a heron",
        "width": 64,
        "height": 64,
        "num_outputs": 1,
        "seed": 3,
        **extra,
    }
    assert result.parameters["input"] == sent
    assert (result.images[0].width, result.images[0].height) == (64, 64)


# --------------------------------------------------------------------------- editing


async def test_kontext_edit_sends_the_input_image(fake_replicate):
    source = png(64, 48)
    result = await backend(fake_replicate, "black-forest-labs/flux-kontext-pro").generate(
        ImageRequest("make it blue", images=(source,), seed=11)
    )
    sent = create_input(fake_replicate)
    assert data_uri_bytes(sent["input_image"]) == source.data
    assert sent["aspect_ratio"] == "match_input_image"
    assert result.parameters["input"]["input_image"].startswith("<image ")
    assert "base64" not in str(result.parameters)
    (image,) = result.images
    assert (image.width, image.height) == (64, 48)
    with Image.open(io.BytesIO(image.data)) as out:
        assert out.convert("RGB").getpixel((32, 24)) == (55, 225, 225)  # the fake inverts


async def test_kontext_with_a_chosen_size_sends_that_ratio(fake_replicate):
    await backend(fake_replicate, "black-forest-labs/flux-kontext-max").generate(
        ImageRequest("make it blue", images=(png(64, 48),), size="1344x768")
    )
    assert create_input(fake_replicate)["aspect_ratio"] == "16:9"


async def test_sdxl_img2img_with_mask(fake_replicate):
    source = png(64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # left half transparent: repaint it
    out = io.BytesIO()
    mask.save(out, "PNG")
    mask_image = InputImage(out.getvalue(), "image/png", 64, 64)
    result = await backend(fake_replicate, SDXL).generate(
        ImageRequest("a red barn", images=(source,), mask=mask_image, strength=0.6, seed=5)
    )
    sent = create_input(fake_replicate)
    assert data_uri_bytes(sent["image"]) == source.data
    assert sent["prompt_strength"] == 0.6 and sent["seed"] == 5
    assert "width" not in sent and "height" not in sent  # the output takes the image's size
    with Image.open(io.BytesIO(data_uri_bytes(sent["mask"]))) as sdxl_mask:
        assert sdxl_mask.convert("L").getpixel((5, 5)) == 255  # white = inpaint
        assert sdxl_mask.convert("L").getpixel((60, 5)) == 0  # black = keep
    assert (result.images[0].width, result.images[0].height) == (64, 64)


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (png(64, 64, (255, 255, 255)), "has no transparency"),
        (png(64, 64, (0, 0, 0, 255), "RGBA"), "nothing to repaint"),
    ],
)
async def test_sdxl_masks_must_mark_the_repaint_area_as_transparent(fake_replicate, mask, words):
    with pytest.raises(InvalidInput, match=words):
        await backend(fake_replicate, SDXL).generate(
            ImageRequest("a red barn", images=(png(64, 64),), mask=mask)
        )
    assert not fake_replicate.requests


async def test_sdxl_img2img_refuses_a_size_it_would_ignore(fake_replicate):
    with pytest.raises(InvalidInput, match="keeps the input image's shape"):
        await backend(fake_replicate, SDXL).generate(
            ImageRequest("a red barn", images=(png(64, 64),), size="1024x1024")
        )


# --------------------------------------------------------------------------- seeds


async def test_a_seed_is_drawn_sent_and_recorded_when_none_is_given(fake_replicate):
    result = await backend(fake_replicate).generate(ImageRequest("a heron", n=2))
    seed = create_input(fake_replicate)["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31
    assert [image.seed for image in result.images] == [seed, seed]
    assert result.seed_honoured


async def test_the_same_seed_makes_the_same_image(fake_replicate):
    b = backend(fake_replicate)
    first = await b.generate(ImageRequest("a heron", seed=42))
    second = await b.generate(ImageRequest("a heron", seed=42))
    third = await b.generate(ImageRequest("a heron", seed=43))
    assert first.images[0].data == second.images[0].data != third.images[0].data


async def test_a_model_without_a_seed_says_so(fake_replicate):
    result = await backend(fake_replicate, "google/imagen-4").generate(
        ImageRequest("a heron", seed=5, size="1408x768")
    )
    sent = create_input(fake_replicate)
    assert "seed" not in sent and sent["aspect_ratio"] == "16:9"
    assert not result.seed_honoured and result.images[0].seed is None


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("model", sorted(replicate_models.MODELS))
async def test_every_listed_model_sends_an_input_the_fake_accepts(fake_replicate, model):
    caps = replicate_models.MODELS[model].capabilities
    size = caps.sizes[-1] if max(map(int, caps.sizes[-1].split("x"))) <= 1600 else None
    result = await backend(fake_replicate, model).generate(ImageRequest("a heron", size=size))
    assert len(result.images) == 1
    assert result.seed_honoured == caps.seed


@pytest.mark.parametrize("model", sorted(replicate_models.MODELS))
def test_capabilities_and_input_names_agree(model):
    spec = replicate_models.MODELS[model]
    caps, names = spec.capabilities, spec.inputs
    assert caps.seed == (names.seed is not None)
    assert (caps.max_n > 1) == (names.n is not None)
    assert caps.negative_prompt == (names.negative_prompt is not None)
    assert caps.steps == (names.steps is not None)
    assert caps.guidance == (names.guidance is not None)
    assert caps.strength == (names.strength is not None)
    assert bool(caps.schedulers) == (names.scheduler is not None)
    assert (caps.edit != "none") == (names.image is not None)
    assert caps.mask == (names.mask is not None)
    assert (len(caps.output_formats) > 1) == (names.output_format is not None)
    assert caps.extra_inputs
    if names.aspect_ratio:
        assert set(caps.sizes) <= set(names.aspect_ratios)


def test_suggested_models_start_with_the_default():
    models = ReplicateImages("r8", "black-forest-labs/flux-dev").suggested_models()
    assert models[0] == "black-forest-labs/flux-dev"
    assert SDXL in models and len(models) == len(set(models))


# --------------------------------------------------------------------------- wiring


def test_create_backend_needs_a_token():
    assert create_backend(Settings(_env_file=None)) is None
    assert create_backend(Settings(_env_file=None, replicate_api_token=" ")) is None
    configured = create_backend(
        Settings(
            _env_file=None,
            replicate_api_token="r8_abc",
            replicate_model="black-forest-labs/flux-dev",
            replicate_poll_interval_s=0.25,
        )
    )
    assert configured is not None
    assert configured.default_model == "black-forest-labs/flux-dev"
    assert configured.capabilities().guidance


async def test_the_registry_resolves_replicate_specs(fake_replicate):
    settings = Settings(
        _env_file=None,
        replicate_api_token=fake_replicate.api_token,
        replicate_base_url=fake_replicate.base_url,
        replicate_poll_interval_s=0.01,
        fetch_allow_hosts=fake_replicate.fetch_allow,
        local_enabled=False,
    )
    version = "ab" * 32
    found, model = BackendRegistry.from_settings(settings).resolve(
        f"replicate:acme/painter:{version}"
    )
    assert found.id == "replicate" and model == f"acme/painter:{version}"
    result = await found.generate(ImageRequest("a heron", model=model, size="64x64"))
    assert fake_replicate.creates()[0].json["version"] == version
    assert result.images[0].width == 64


def test_one_backend_serves_successive_event_loops(fake_replicate):
    b = backend(fake_replicate)
    for seed in (1, 2):
        result = asyncio.run(b.generate(ImageRequest("a heron", seed=seed)))
        assert result.images[0].seed == seed


# --------------------------------------------------------------------------- the fake itself


async def test_the_fake_serves_versions_the_client_can_read(fake_replicate):
    client = replicate.Client(fake_replicate.api_token, base_url=fake_replicate.base_url)
    versions = Versions(client, model=("stability-ai", "sdxl"))
    version = await versions.async_get(replicate_models.SDXL_VERSION)
    assert version.id == replicate_models.SDXL_VERSION and version.openapi_schema


def test_the_fake_runs_as_a_process_steered_over_http():
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.replicate_server", "--processing-polls", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        ready, base_url = process.stdout.readline().split()
        assert ready == "READY"
        auth = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        with httpx.Client(base_url=base_url, timeout=10) as http:
            http.post("/_fake/fail_next", json={"kind": "rate_limit", "retry_after": 7})
            limited = http.post(f"/v1/models/{SCHNELL}/predictions", headers=auth, json={})
            assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
            assert limited.json() == {
                "title": "Request was throttled",
                "detail": "Request was throttled. Expected available in 1 second.",
                "status": 429,
            }
            body = {"input": {"prompt": "a heron", "width": 64, "height": 64}}
            created = http.post("/v1/models/acme/painter/predictions", headers=auth, json=body)
            assert created.status_code == 201 and created.json()["status"] == "starting"
            done = http.get(created.json()["urls"]["get"], headers=auth).json()
            assert done["status"] == "succeeded" and done["metrics"]["predict_time"] > 0
            assert http.get(done["output"]).headers["content-type"] == "image/png"
            recorded = http.get("/_fake/requests").json()
            assert [r["method"] for r in recorded] == ["POST", "POST", "GET", "GET"]
            assert all(r["authorized"] for r in recorded[:3])
            http.post("/_fake/configure", json={"output_mode": "data"})
            again = http.post("/v1/models/acme/painter/predictions", headers=auth, json=body)
            output = http.get(again.json()["urls"]["get"], headers=auth).json()["output"]
            assert output.startswith("data:image/png;base64,")
            http.post("/_fake/reset")
            assert http.get("/_fake/requests").json() == []
    finally:
        process.terminate()
        process.wait(10)
