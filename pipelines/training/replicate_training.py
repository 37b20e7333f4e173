"""Train a LoRA on Replicate through the official client's trainings API.

Why this path: Replicate trains a LoRA as a *training* of a trainer model's version
(`POST /v1/models/{owner}/{name}/versions/{version}/trainings`), which pushes the result
as a new version of a model the user owns (`destination`). That version runs like any
other model (`owner/name:version` through the predictions API), so once the training
succeeds the chat can generate with it by passing `result.version` as the model.

The dataset is our prepared folder, zipped (images plus same-named .txt captions: the
layout Replicate's LoRA trainers read captions from), never the user's raw upload. A zip
up to `data_uri_limit_bytes` (1 MB, Replicate's advice) goes inline as a data URI; a
larger one is uploaded through the files API (up to 100 MB) and passed by its URL.

A training lives a prediction's life at the `/v1/trainings` endpoints, so the one
Replicate client (`pipelines/replicate_api/replicate_client.py`, with `TRAININGS`) creates
it with the project's retry policy (Retry-After included), polls it, and cancels it on Replicate
whenever we stop waiting: a training nobody waits for keeps running and billing GPU time.
Progress comes from the trainer's tqdm log lines ("120/1000 [...] loss: 3.9e-01"), and
the loss is recorded for the chart when a `TrainingProgress` is passed.

Trainers are data (`TRAINERS`): which model, which version (None: its latest, looked up
when training starts) and what its inputs are called. A trainer not in the table is
refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

import httpx

from core.errors import BackendFailed, InvalidInput
from core.logging_setup import get_logger
from pipelines.backend_settings import BackendSettings
from pipelines.progress import Progress
from pipelines.replicate_api.model_refs import parse_ref
from pipelines.replicate_api.replicate_client import (
    TRAININGS,
    ClientOptions,
    ReplicateClient,
    configured,
    report,
    stop_if_cancelled,
)
from pipelines.replicate_api.replicate_errors import (
    MALFORMED,
    api_error,
    check_finished,
    malformed,
    unreachable,
)
from pipelines.replicate_api.replicate_files import data_uri, redact
from pipelines.training.lora_dataset import PreparedDataset, dataset_zip

if TYPE_CHECKING:  # `replicate` is imported on first use: it costs start-up time (numpy)
    import replicate
    from replicate.exceptions import ReplicateError
    from replicate.training import Training

log = get_logger(__name__)

DATA_URI_LIMIT_BYTES = 1_000_000  # Replicate: data URIs only for files under ~1 MB
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # Replicate's files API limit
_STEP = re.compile(r"(\d+)/(\d+) \[")
_LOSS = re.compile(r"loss[:=]\s*([0-9.]+(?:e[-+]?\d+)?)", re.I)


@dataclass(frozen=True)
class Trainer:
    """A trainer model on Replicate and the names of its inputs."""

    model: str  # owner/name
    version: str | None = None  # None: the model's latest version at training time
    images: str = "input_images"
    trigger_word: str = "trigger_word"
    steps: str = "steps"
    learning_rate: str = "learning_rate"
    rank: str = "lora_rank"
    batch_size: str = "batch_size"
    resolution: str = "resolution"
    autocaption: str | None = "autocaption"  # turned off: our captions come with the zip
    step_range: tuple[int, int] = (3, 6000)
    rank_range: tuple[int, int] = (1, 128)


# ostris/flux-dev-lora-trainer's inputs, per its schema on replicate.com.
TRAINERS: dict[str, Trainer] = {
    "ostris/flux-dev-lora-trainer": Trainer("ostris/flux-dev-lora-trainer"),
}
DEFAULT_TRAINER = "ostris/flux-dev-lora-trainer"


@dataclass(frozen=True)
class ReplicateTrainingRequest:
    """Train on `dataset` and push the result as a new version of `destination`."""

    destination: str  # owner/name of a model the token's account owns
    dataset: PreparedDataset
    steps: int = 1000
    learning_rate: float = 4e-4
    rank: int = 16
    batch_size: int = 1
    trainer: str = DEFAULT_TRAINER


@dataclass(frozen=True)
class ReplicateTrainingResult:
    """A finished training; `version` ("owner/name:hash") is the model to generate with."""

    training_id: str
    version: str
    destination: str
    weights_url: str | None
    trigger_word: str
    trainer: str
    trainer_version: str
    input: dict[str, Any]  # as sent, with the inline zip shortened to its size
    losses: tuple[tuple[int, float], ...] = ()  # parsed from the trainer's logs


# A training's own client defaults: runs take 20 minutes or more, so a slow poll, a long
# wait and a gentler backoff than images, unless given.
TRAINING_CLIENT_OPTIONS = ClientOptions(
    poll_interval_s=5.0, max_wait_s=4 * 3600.0, retry_backoff_s=1.0
)


class ReplicateLoraTrainer:
    id = "replicate"
    default_model = DEFAULT_TRAINER

    def __init__(
        self,
        api_token: str,
        *,
        data_uri_limit_bytes: int = DATA_URI_LIMIT_BYTES,
        trainers: Mapping[str, Trainer] = TRAINERS,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._client_options = TRAINING_CLIENT_OPTIONS | options
        self._token = api_token
        self._data_uri_limit = data_uri_limit_bytes
        self.trainers = dict(trainers)

    async def train(
        self, request: ReplicateTrainingRequest, progress: Progress | None = None
    ) -> ReplicateTrainingResult:
        # 1. Refuse what cannot work, before anything is uploaded or billed.
        trainer = self._trainer(request)
        destination = _check_destination(request.destination)
        archive = await asyncio.to_thread(dataset_zip, request.dataset)
        if len(archive) > MAX_UPLOAD_BYTES:
            raise InvalidInput(
                f"The training set zips to {len(archive) / 2**20:.1f} MB; Replicate takes up "
                f"to {MAX_UPLOAD_BYTES // 2**20} MB. Use fewer images or a lower resolution."
            )
        # A client of its own per training (closed after): trainings are rare and long.
        client = ReplicateClient(self._token, **self._client_options)
        label = f"Replicate {trainer.model}"
        try:
            api = client.connect().api
            # 2. The dataset (inline or uploaded) and the trainer's version.
            report(progress, 0, "uploading the training images")
            images = await self._dataset_input(api, archive, destination)
            version = trainer.version or await self._latest_version(api, trainer.model)
            inputs = _inputs(trainer, request, images)
            # 3. Create, poll until it ends (cancelling it on Replicate if we stop waiting).
            stop_if_cancelled(TRAININGS, progress)
            losses: list[tuple[int, float]] = []
            training = await self._run(
                client, trainer, version, inputs, destination, progress, losses
            )
        finally:
            await client.aclose()
        # 4. The outcome.
        check_finished(TRAININGS, training, label)
        output = training.output if isinstance(training.output, dict) else {}
        made = output.get("version")
        if not _is_version(made):
            raise BackendFailed(
                f"The Replicate training {training.id} succeeded but named no model version "
                f"({made!r}); check it at https://replicate.com/{destination}."
            )
        return ReplicateTrainingResult(
            training_id=training.id,
            version=made,
            destination=destination,
            weights_url=output.get("weights") if isinstance(output.get("weights"), str) else None,
            trigger_word=request.dataset.trigger_word,
            trainer=trainer.model,
            trainer_version=version,
            input=redact(inputs),
            losses=tuple(losses),
        )

    async def _run(
        self,
        client: ReplicateClient,
        trainer: Trainer,
        version: str,
        inputs: dict[str, Any],
        destination: str,
        progress: Progress | None,
        losses: list[tuple[int, float]],
    ) -> Training:
        """Create the training and wait for it to end, filling `losses` from its logs."""
        label = f"Replicate {trainer.model}"

        def start(api: replicate.Client) -> Awaitable[Training]:
            return api.trainings.async_create(
                model=trainer.model, version=version, input=inputs, destination=destination
            )

        def refuse(exc: ReplicateError) -> InvalidInput | None:
            return _not_found(exc, trainer, version, destination)

        def on_status(current: Training) -> None:
            _report_training(progress, current, losses)

        training = await client.create(TRAININGS, start, label, progress, refuse)
        log.info("replicate_training_created", training=training.id, trainer=trainer.model)
        training = await client.wait(TRAININGS, training, label, progress, on_status)
        on_status(training)  # the last log lines: the final steps' losses
        return training

    # -- checks ---------------------------------------------------------------------

    def _trainer(self, request: ReplicateTrainingRequest) -> Trainer:
        trainer = self.trainers.get(request.trainer)
        if trainer is None:
            raise InvalidInput(
                f"{request.trainer!r} is not a LoRA trainer Atelier knows how to call. "
                f"Known: {', '.join(sorted(self.trainers))}."
            )
        low, high = trainer.step_range
        if not low <= request.steps <= high:
            raise InvalidInput(
                f"{trainer.model} takes {low} to {high} steps; {request.steps} was asked."
            )
        low, high = trainer.rank_range
        if not low <= request.rank <= high:
            raise InvalidInput(
                f"{trainer.model} takes a rank of {low} to {high}; {request.rank} was asked."
            )
        if not (math.isfinite(request.learning_rate) and 0 < request.learning_rate <= 1):
            raise InvalidInput(
                f"learning_rate must be above 0 and at most 1; {request.learning_rate} was asked."
            )
        if not 1 <= request.batch_size <= len(request.dataset.images):
            raise InvalidInput(
                f"batch_size must be 1 to {len(request.dataset.images)} (the number of images); "
                f"{request.batch_size} was asked."
            )
        return trainer

    # -- the calls --------------------------------------------------------------------

    async def _dataset_input(self, api: replicate.Client, archive: bytes, name: str) -> str:
        if len(archive) <= self._data_uri_limit:
            return data_uri(archive, "application/zip")
        from replicate.exceptions import ReplicateError

        filename = f"{name.replace('/', '-')}-dataset.zip"
        answer, after = "the upload of the training images", "Nothing was started."
        try:
            uploaded = await api.files.async_create(
                io.BytesIO(archive), filename=filename, content_type="application/zip"
            )
        except ReplicateError as exc:
            raise api_error(exc, "upload the training images") from exc
        except httpx.HTTPError as exc:
            raise unreachable(exc, "uploading the training images") from exc
        except MALFORMED as exc:
            raise malformed(exc, answer, after) from exc
        link = (uploaded.urls or {}).get("get")
        if not isinstance(link, str) or not link.startswith(("https://", "http://")):
            raise malformed("a file without a download link (`urls.get`)", answer, after)
        return link

    async def _latest_version(self, api: replicate.Client, model: str) -> str:
        from replicate.exceptions import ReplicateError

        try:
            found = await api.models.async_get(model)
        except ReplicateError as exc:
            if exc.status == 404:
                raise InvalidInput(
                    f"Replicate has no trainer model {model} (or it is private to another "
                    f"account). Check https://replicate.com/{model}."
                ) from exc
            raise api_error(exc, f"look up the trainer {model}") from exc
        except httpx.HTTPError as exc:
            raise unreachable(exc, f"looking up the trainer {model}") from exc
        except MALFORMED as exc:
            answer = f"the look-up of the trainer {model}"
            raise malformed(exc, answer, "Nothing was started.") from exc
        if found.latest_version is None:
            raise InvalidInput(f"The trainer {model} has no version to train with.")
        return found.latest_version.id


# --------------------------------------------------------------------------- helpers


def _is_version(value: object) -> bool:
    """An "owner/name:<64 hex>" reference, as a finished training names its result."""
    if not isinstance(value, str):
        return False
    try:
        return parse_ref(value).version is not None
    except InvalidInput:
        return False


def _check_destination(destination: str) -> str:
    ref = parse_ref(destination)
    if ref.version is not None:
        raise InvalidInput(
            f"The destination is a model, owner/name, not a version; got {destination!r}."
        )
    return ref.slug


def _inputs(trainer: Trainer, request: ReplicateTrainingRequest, images: str) -> dict[str, Any]:
    inputs: dict[str, Any] = {
        trainer.images: images,
        trainer.trigger_word: request.dataset.trigger_word,
        trainer.steps: request.steps,
        trainer.learning_rate: request.learning_rate,
        trainer.rank: request.rank,
        trainer.batch_size: request.batch_size,
        trainer.resolution: str(request.dataset.resolution),
    }
    if trainer.autocaption:
        inputs[trainer.autocaption] = False
    return inputs


def _report_training(
    progress: Progress | None, training: Training, losses: list[tuple[int, float]]
) -> None:
    """Progress from the trainer's log lines; each newly seen step's loss is recorded."""
    if training.status == "starting":
        report(progress, 0, "starting (waiting for a Replicate GPU)")
        return
    logs = training.logs or ""
    seen = {step for step, _ in losses}
    for line in logs.splitlines():
        step_match, loss_match = _STEP.search(line), _LOSS.search(line)
        if step_match and loss_match and int(step_match[1]) not in seen:
            step, loss = int(step_match[1]), float(loss_match[1])
            seen.add(step)
            losses.append((step, loss))
            record = getattr(progress, "record", None)
            if record is not None:
                record("loss", step, loss)
    steps = _STEP.findall(logs)
    if steps:
        done, total = (int(n) for n in steps[-1])
        report(progress, done, f"training on Replicate: step {done}/{total}", total)
    elif training.status == "processing":
        report(progress, 0, "training on Replicate (preparing)")


def _not_found(
    exc: ReplicateError, trainer: Trainer, version: str, destination: str
) -> InvalidInput | None:
    """What a 404 on starting a training means: the trainer or the destination is missing."""
    if exc.status != 404:
        return None
    detail = str(exc.detail or exc.title or "").strip()[:500] or "not found"
    return InvalidInput(
        f"Replicate cannot start the training: {detail}. Check that the trainer "
        f"{trainer.model} (version {version[:12]}…) exists and that the destination model "
        f"{destination} exists and is yours (create it at https://replicate.com/create)."
    )


def create_training_backend(
    settings: BackendSettings, images: object = None
) -> ReplicateLoraTrainer | None:
    """None without a Replicate token, as for the image backend."""
    found = configured(settings)
    if found is None:
        return None
    token, options = found  # a training's own poll interval; it downloads nothing
    return ReplicateLoraTrainer(
        token,
        base_url=options.get("base_url"),
        timeout_s=options.get("timeout_s", 120.0),
        max_retries=options.get("max_retries", 2),
    )
