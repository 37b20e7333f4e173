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

Like predictions (see replicate_images), a training is created, then polled; progress
comes from the trainer's tqdm log lines ("120/1000 [...] loss: 3.9e-01"), and the loss
is recorded for the chart when a `TrainingProgress` is passed. A training nobody waits
for keeps running and billing GPU time, so it is cancelled on Replicate whenever we stop
waiting: on a user stop, an error, a timeout, or the awaiting task being cancelled.

Trainers are data (`TRAINERS`): which model, which version (None: its latest, looked up
when training starts) and what its inputs are called. A trainer not in the table is
refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import replicate
from replicate.exceptions import ReplicateError
from replicate.training import Training

from memory.errors import (
    BackendError,
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    InvalidInput,
    QuotaExhausted,
    RateLimited,
)
from memory.logging_setup import get_logger
from pipelines.lora_dataset import PreparedDataset, dataset_zip
from pipelines.progress import Progress
from pipelines.replicate_models import parse_ref

log = get_logger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "canceled"})
DATA_URI_LIMIT_BYTES = 1_000_000  # Replicate: data URIs only for files under ~1 MB
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # Replicate's files API limit
CANCEL_TIMEOUT_S = 5.0
_STEP = re.compile(r"(\d+)/(\d+) \[")
_LOSS = re.compile(r"loss[:=]\s*([0-9.]+(?:e[-+]?\d+)?)", re.I)
_TOKEN_HINT = "check REPLICATE_API_TOKEN; it may be wrong, expired or revoked"


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


# ostris/flux-dev-lora-trainer's inputs, per its schema (hosted-apis.md).
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


class ReplicateLoraTrainer:
    def __init__(
        self,
        api_token: str,
        *,
        base_url: str | None = None,
        poll_interval_s: float = 5.0,
        timeout_s: float = 120.0,
        max_wait_s: float = 4 * 3600.0,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        data_uri_limit_bytes: int = DATA_URI_LIMIT_BYTES,
        trainers: Mapping[str, Trainer] = TRAINERS,
    ) -> None:
        self._token = api_token
        self._base_url = base_url
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._max_wait_s = max_wait_s
        self._max_retries = max_retries
        self._retry_backoff_s = retry_backoff_s
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
        transport = httpx.AsyncHTTPTransport()
        timeout = httpx.Timeout(self._timeout_s, connect=min(10.0, self._timeout_s))
        api = replicate.Client(
            self._token, base_url=self._base_url, timeout=timeout, transport=transport
        )
        try:
            # 2. The dataset (inline or uploaded) and the trainer's version.
            _report(progress, 0, "uploading the training images")
            images = await self._dataset_input(api, archive, destination)
            version = trainer.version or await self._latest_version(api, trainer.model)
            inputs = _inputs(trainer, request, images)
            # 3. Create, poll until it ends (cancelling it on Replicate if we stop waiting).
            _stop_if_cancelled(progress)
            training = await self._create(api, trainer, version, inputs, destination, progress)
            log.info("replicate_training_created", training=training.id, trainer=trainer.model)
            losses: list[tuple[int, float]] = []
            training = await self._wait(api, training, progress, losses)
        finally:
            await transport.aclose()
        # 4. The outcome.
        if training.status == "failed":
            error = str(training.error or "").strip()[:500] or "no reason given"
            raise BackendFailed(
                f"The LoRA training on Replicate failed (training {training.id}): {error}"
            )
        if training.status == "canceled":
            raise BackendFailed(
                f"The Replicate training {training.id} was canceled before it finished (from "
                "Replicate's dashboard or another client); no LoRA was made."
            )
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
            input=_redact(inputs),
            losses=tuple(losses),
        )

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
            return "data:application/zip;base64," + base64.b64encode(archive).decode("ascii")
        filename = f"{name.replace('/', '-')}-dataset.zip"
        try:
            uploaded = await api.files.async_create(
                io.BytesIO(archive), filename=filename, content_type="application/zip"
            )
        except ReplicateError as exc:
            raise _api_error(exc, "upload the training images") from exc
        except httpx.HTTPError as exc:
            raise _unreachable(exc, "uploading the training images") from exc
        return uploaded.urls["get"]

    async def _latest_version(self, api: replicate.Client, model: str) -> str:
        try:
            found = await api.models.async_get(model)
        except ReplicateError as exc:
            if exc.status == 404:
                raise InvalidInput(
                    f"Replicate has no trainer model {model} (or it is private to another "
                    f"account). Check https://replicate.com/{model}."
                ) from exc
            raise _api_error(exc, f"look up the trainer {model}") from exc
        except httpx.HTTPError as exc:
            raise _unreachable(exc, f"looking up the trainer {model}") from exc
        if found.latest_version is None:
            raise InvalidInput(f"The trainer {model} has no version to train with.")
        return found.latest_version.id

    async def _create(
        self,
        api: replicate.Client,
        trainer: Trainer,
        version: str,
        inputs: dict[str, Any],
        destination: str,
        progress: Progress | None,
    ) -> Training:
        """POST the training; on 429 and 5xx back off and try again (the client never does)."""
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await _create_once(api, trainer.model, version, inputs, destination)
            except ReplicateError as exc:
                status = exc.status or 0
                if (status != 429 and status < 500) or attempt == attempts:
                    raise _create_error(exc, trainer, version, destination) from exc
            except httpx.ConnectError as exc:
                if attempt == attempts:
                    raise _unreachable(exc, "starting the training") from exc
            except httpx.HTTPError as exc:
                # It may have arrived: trying again could start (and bill) a second one.
                raise _unreachable(exc, "starting the training") from exc
            delay = self._retry_backoff_s * 2 ** (attempt - 1)
            _report(progress, 0, f"Replicate is busy; retrying in {delay:.2g} s")
            await _sleep(delay, progress)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _wait(
        self,
        api: replicate.Client,
        training: Training,
        progress: Progress | None,
        losses: list[tuple[int, float]],
    ) -> Training:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        current = training
        try:
            while current.status not in TERMINAL:
                _report_training(progress, current, losses)
                if loop.time() > deadline:
                    raise BackendUnavailable(
                        f"The Replicate training {current.id} did not finish within "
                        f"{self._max_wait_s / 60:.0f} minutes; it was cancelled."
                    )
                await _sleep(self._poll_interval_s, progress)
                current = await self._poll(api, current.id)
        except (Exception, asyncio.CancelledError):
            await _cancel_remote(api, training.id)
            raise
        _report_training(progress, current, losses)
        return current

    async def _poll(self, api: replicate.Client, training_id: str) -> Training:
        try:
            return await api.trainings.async_get(training_id)
        except ReplicateError as exc:
            raise _api_error(exc, f"follow training {training_id}") from exc
        except httpx.HTTPError as exc:
            raise _unreachable(exc, f"following training {training_id}") from exc


# --------------------------------------------------------------------------- helpers


async def _create_once(
    api: replicate.Client, model: str, version: str, inputs: dict[str, Any], destination: str
) -> Training:
    """One POST; if we are cancelled while it is in flight, cancel what it started."""
    task = asyncio.ensure_future(
        api.trainings.async_create(
            model=model, version=version, input=inputs, destination=destination
        )
    )
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        # The training may already exist and would bill GPU time for hours: hear the
        # answer (briefly) so that it can be cancelled too.
        try:
            created = await asyncio.wait_for(task, CANCEL_TIMEOUT_S)
        except (Exception, asyncio.CancelledError):
            raise asyncio.CancelledError() from None
        await _cancel_remote(api, created.id)
        raise


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


def _redact(inputs: dict[str, Any]) -> dict[str, Any]:
    def short(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:"):
            return f"<zip {math.ceil(len(value.partition(',')[2]) * 3 / 4 / 1024)} KB>"
        return value

    return {key: short(value) for key, value in inputs.items()}


def _report(progress: Progress | None, done: int, note: str, total: int = 100) -> None:
    if progress is not None:
        progress.report(done, total, note)


def _report_training(
    progress: Progress | None, training: Training, losses: list[tuple[int, float]]
) -> None:
    """Progress from the trainer's log lines; each newly seen step's loss is recorded."""
    if training.status == "starting":
        _report(progress, 0, "starting (waiting for a Replicate GPU)")
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
        _report(progress, done, f"training on Replicate: step {done}/{total}", total)
    elif training.status == "processing":
        _report(progress, 0, "training on Replicate (preparing)")


def _stop_if_cancelled(progress: Progress | None) -> None:
    if progress is not None and progress.cancelled:
        raise BackendFailed(
            "Stopped at your request; the training on Replicate was cancelled (billing stops)."
        )


async def _sleep(seconds: float, progress: Progress | None) -> None:
    """Sleep, waking every 0.1 s to notice a stop from any thread."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        _stop_if_cancelled(progress)
        await asyncio.sleep(min(left, 0.1))
    _stop_if_cancelled(progress)


async def _cancel_remote(api: replicate.Client, training_id: str) -> None:
    """Best effort and bounded: we are already unwinding with the error that matters."""
    task = asyncio.ensure_future(api.trainings.async_cancel(training_id))
    try:
        await asyncio.wait_for(asyncio.shield(task), CANCEL_TIMEOUT_S)
        log.info("replicate_training_cancelled", training=training_id)
    except (Exception, asyncio.CancelledError) as exc:
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        log.warning(
            "replicate_training_cancel_failed", training=training_id, error=type(exc).__name__
        )


def _detail(exc: ReplicateError) -> str:
    return str(exc.detail or exc.title or "").strip()[:500]


def _api_error(exc: ReplicateError, doing: str) -> BackendError:
    status = exc.status or 0
    if status in (401, 403):
        return BackendNotConfigured(f"Replicate rejected the API token ({_TOKEN_HINT}).")
    if status == 402:
        return QuotaExhausted(
            "Your Replicate account is out of credit (HTTP 402). Add credit at "
            "replicate.com/account/billing; retrying will not help."
        )
    if status == 429:
        return RateLimited(f"Replicate is rate-limiting requests; could not {doing}. Try later.")
    return BackendUnavailable(
        f"Replicate answered HTTP {status} when trying to {doing}"
        f"{': ' + _detail(exc) if _detail(exc) else ''}. Try again in a moment."
    )


def _create_error(
    exc: ReplicateError, trainer: Trainer, version: str, destination: str
) -> BackendError | InvalidInput:
    status = exc.status or 0
    if status == 404:
        return InvalidInput(
            f"Replicate cannot start the training: {_detail(exc) or 'not found'}. Check that "
            f"the trainer {trainer.model} (version {version[:12]}…) exists and that the "
            f"destination model {destination} exists and is yours (create it at "
            "https://replicate.com/create)."
        )
    if status in (400, 422):
        return InvalidInput(f"Replicate refused the training input: {_detail(exc)}")
    return _api_error(exc, f"start the training with {trainer.model}")


def _unreachable(exc: httpx.HTTPError, doing: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"Could not reach Replicate while {doing} ({type(exc).__name__}). Check the "
        "connection or REPLICATE_BASE_URL, then try again."
    )


def create_trainer(settings: Any) -> ReplicateLoraTrainer | None:
    """None without a Replicate token, as for the image backend."""
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        return None
    return ReplicateLoraTrainer(
        token.get_secret_value().strip(),
        base_url=settings.replicate_base_url,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
    )
