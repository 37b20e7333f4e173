"""LoRA training on Replicate: the real `replicate` client against the fake server.

Assertions read what the fake received (paths, bodies, the uploaded zip) and what the
trainer returned or raised; nothing mocks the client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from core.errors import BackendFailed, BackendNotConfigured, InvalidInput, RateLimited
from core.logging_setup import configure_logging
from pipelines.images.base import ImageRequest
from pipelines.images.replicate_images import ReplicateImages
from pipelines.progress import Progress
from pipelines.training.lora_dataset import PreparedDataset, dataset_zip
from pipelines.training.lora_training import TrainingProgress
from pipelines.training.replicate_training import (
    TRAINERS,
    ReplicateLoraTrainer,
    ReplicateTrainingRequest,
    Trainer,
)
from tests.fakes.replicate_server import FakeReplicate
from tests.lora_fixtures import prepare
from tests.replicate_fixtures import fetch_policy_for

DESTINATION = "me/my-style"
TRAINER = "ostris/flux-dev-lora-trainer"


@pytest.fixture(autouse=True)
def _log_to_this_tests_stderr() -> None:
    configure_logging()


@pytest.fixture
def dataset(tmp_path: Path) -> PreparedDataset:
    return prepare(tmp_path, "style", count=3)


def trainer(fake: FakeReplicate, **options: Any) -> ReplicateLoraTrainer:
    settings: dict[str, Any] = {
        "base_url": fake.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "retry_backoff_s": 0.01,
    }
    token = options.pop("token", fake.api_token)
    return ReplicateLoraTrainer(token, **{**settings, **options})


def ask(dataset: PreparedDataset, **overrides: Any) -> ReplicateTrainingRequest:
    values: dict[str, Any] = {"destination": DESTINATION, "dataset": dataset, "steps": 300}
    return ReplicateTrainingRequest(**{**values, **overrides})


def training_creates(fake: FakeReplicate):
    return fake.requests_to(r"/versions/\w+/trainings$", "POST")


async def until_polled(fake: FakeReplicate, timeout: float = 10.0) -> None:
    """Wait until the trainer has polled its training once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not fake.requests_to(r"^/v1/trainings/\w+$", "GET"):
        assert asyncio.get_running_loop().time() < deadline, "the training was never polled"
        await asyncio.sleep(0.01)


def zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


# --------------------------------------------------------------------------- success


async def test_trains_reports_progress_and_the_new_version_runs(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    fake_replicate.configure(starting_polls=1, processing_polls=2)
    progress = TrainingProgress()
    result = await trainer(fake_replicate).train(ask(dataset, rank=8), progress)

    lookup = fake_replicate.requests_to(f"^/v1/models/{TRAINER}$", "GET")
    assert len(lookup) == 1  # the trainer's latest version, looked up
    (create,) = training_creates(fake_replicate)
    assert create.path.startswith(f"/v1/models/{TRAINER}/versions/")
    assert create.json["destination"] == DESTINATION
    sent = create.json["input"]
    assert {k: v for k, v in sent.items() if k != "input_images"} == {
        "trigger_word": "TOK",
        "steps": 300,
        "learning_rate": 4e-4,
        "lora_rank": 8,
        "batch_size": 1,
        "resolution": "32",
        "autocaption": False,
    }
    uploaded = base64.b64decode(sent["input_images"].partition(",")[2])
    assert sent["input_images"].startswith("data:application/zip;base64,")
    assert uploaded == dataset_zip(dataset)
    assert zip_names(uploaded)[:2] == ["0001.png", "0001.txt"]

    (training,) = fake_replicate.trainings.trainings.values()
    version = training.output["version"]
    assert result.version == version and version.startswith(f"{DESTINATION}:")
    assert result.training_id == training.id and result.trigger_word == "TOK"
    assert result.weights_url.endswith(f"/trainings/{training.id}/weights.tar")
    assert result.input["input_images"].startswith("<zip ")  # not the whole zip
    notes = [u.note for u in progress.history]
    assert notes[0] == "uploading the training images"
    assert "starting (waiting for a Replicate GPU)" in notes
    assert "training on Replicate: step 100/300" in notes
    assert progress.latest.done == 300 and progress.latest.total == 300
    assert [step for step, _ in result.losses] == [100, 200, 300]
    assert progress.losses == result.losses

    images = ReplicateImages(
        fake_replicate.api_token,
        base_url=fake_replicate.base_url,
        poll_interval_s=0.01,
        fetch_policy=fetch_policy_for(fake_replicate),
    )
    made = await images.generate(ImageRequest("TOK, a cat", model=result.version))
    await images.aclose()
    (prediction,) = fake_replicate.predictions()
    assert prediction["model"] == DESTINATION  # the trained version answers at once
    assert made.images


async def test_a_large_dataset_goes_through_the_files_api(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    result = await trainer(fake_replicate, data_uri_limit_bytes=0).train(ask(dataset))

    (upload,) = fake_replicate.requests_to("^/v1/files$", "POST")
    assert upload.authorized
    assert upload.headers["content-type"].startswith("multipart/form-data")
    (stored,) = fake_replicate.trainings.files.values()
    name, content_type, data = stored
    assert (name, content_type) == ("me-my-style-dataset.zip", "application/zip")
    assert data == dataset_zip(dataset)
    sent = training_creates(fake_replicate)[0].json["input"]["input_images"]
    assert sent.startswith(fake_replicate.base_url) and sent.endswith("/download")
    assert result.input["input_images"] == sent


# --------------------------------------------------------------------------- endings


async def test_failed_and_canceled_trainings_are_errors(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    fake_replicate.trainings.fail_next("failed", "loss went NaN at step 120")
    with pytest.raises(BackendFailed, match="training on Replicate failed.*loss went NaN"):
        await trainer(fake_replicate).train(ask(dataset))
    fake_replicate.trainings.fail_next("canceled")
    with pytest.raises(BackendFailed, match="was canceled before it finished"):
        await trainer(fake_replicate).train(ask(dataset))


async def test_a_stop_cancels_the_training_on_replicate(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    fake_replicate.configure(processing_polls=10_000)
    progress = TrainingProgress()
    job = asyncio.create_task(trainer(fake_replicate).train(ask(dataset), progress))
    await until_polled(fake_replicate)
    progress.cancel()
    with pytest.raises(BackendFailed, match="Stopped at your request"):
        await job
    (training,) = fake_replicate.trainings.trainings.values()
    assert training.status == "canceled"
    assert fake_replicate.requests_to(f"^/v1/trainings/{training.id}/cancel$", "POST")

    # Cancelling the awaiting task cancels it on Replicate too.
    fake_replicate.reset()
    fake_replicate.configure(processing_polls=10_000)
    job = asyncio.create_task(trainer(fake_replicate).train(ask(dataset)))
    await until_polled(fake_replicate)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    (training,) = fake_replicate.trainings.trainings.values()
    assert training.status == "canceled"


async def test_a_busy_replicate_is_retried(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    fake_replicate.trainings.fail_next("rate_limit")
    result = await trainer(fake_replicate).train(ask(dataset))
    assert len(training_creates(fake_replicate)) == 2 and result.version


async def test_a_rate_limited_training_waits_as_replicate_asks(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    # The backoff is 0.01 s here, so a second create a second later is the Retry-After.
    fake_replicate.trainings.fail_next("rate_limit", retry_after=1)
    progress = Progress()
    result = await trainer(fake_replicate).train(ask(dataset), progress)
    first, second = training_creates(fake_replicate)
    assert second.at - first.at >= 0.95 and result.version
    assert any("retrying in 1 s" in update.note for update in progress.history)


async def test_a_training_asked_to_wait_too_long_gives_up_at_once(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    fake_replicate.trainings.fail_next("rate_limit", retry_after=3600)
    with pytest.raises(RateLimited) as caught:
        await trainer(fake_replicate).train(ask(dataset))
    assert caught.value.retry_after_s == 3600
    assert "asks to wait 3600 s" in caught.value.message
    assert len(training_creates(fake_replicate)) == 1
    assert not fake_replicate.trainings.trainings


# --------------------------------------------------------------------------- refusals


async def test_bad_token_is_named(fake_replicate: FakeReplicate, dataset: PreparedDataset) -> None:
    with pytest.raises(BackendNotConfigured, match="rejected the API token"):
        await trainer(fake_replicate, token="r8_wrong").train(ask(dataset))
    assert not training_creates(fake_replicate)


async def test_unknown_trainers_and_destinations(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    with pytest.raises(InvalidInput, match="not a LoRA trainer Atelier knows.*Known: ostris"):
        await trainer(fake_replicate).train(ask(dataset, trainer="someone/else"))
    assert not fake_replicate.requests  # refused before any request

    gone = {"acme/does-not-exist-trainer": Trainer("acme/does-not-exist-trainer")}
    with pytest.raises(InvalidInput, match="no trainer model acme/does-not-exist-trainer"):
        await trainer(fake_replicate, trainers=gone).train(
            ask(dataset, trainer="acme/does-not-exist-trainer")
        )
    pinned = {TRAINER: Trainer(TRAINER, version="0" * 64)}
    with pytest.raises(InvalidInput, match="cannot start the training.*version 000000000000"):
        await trainer(fake_replicate, trainers=pinned).train(ask(dataset))
    with pytest.raises(InvalidInput, match="destination does not exist.*me/does-not-exist"):
        await trainer(fake_replicate).train(ask(dataset, destination="me/does-not-exist"))
    assert not fake_replicate.trainings.trainings


async def test_settings_outside_the_trainers_range_are_refused_before_sending(
    fake_replicate: FakeReplicate, dataset: PreparedDataset
) -> None:
    cases = [
        ({"steps": 2}, "takes 3 to 6000 steps; 2 was asked"),
        ({"rank": 500}, "rank of 1 to 128; 500 was asked"),
        ({"batch_size": 4}, r"batch_size must be 1 to 3"),
        ({"learning_rate": -1.0}, "learning_rate must be above 0"),
        ({"destination": "me/x:" + "a" * 64}, "destination is a model, owner/name"),
        ({"destination": "not a model"}, "is not a Replicate model name"),
    ]
    for overrides, message in cases:
        with pytest.raises(InvalidInput, match=message):
            await trainer(fake_replicate).train(ask(dataset, **overrides))
    assert not fake_replicate.requests
    assert TRAINER in TRAINERS
