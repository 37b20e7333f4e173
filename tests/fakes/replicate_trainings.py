"""The trainings side of the fake Replicate API: trainings, the files API, model lookup.

Mounted into `FakeReplicate` (its `trainings` attribute), so requests are recorded,
delayed and authenticated like every other fake endpoint, and the REAL `replicate`
client's `trainings`, `files` and `models` namespaces can be pointed at it.

    POST /v1/files                                             multipart upload
    GET  /v1/files/{id}/download                               the uploaded bytes
    GET  /v1/models/{owner}/{name}                             a model with latest_version
    POST /v1/models/{owner}/{name}/versions/{version}/trainings
    GET  /v1/trainings/{id}
    POST /v1/trainings/{id}/cancel
    GET  /trainings/{id}/weights.tar                           the output (no auth)

A training checks its input as a LoRA trainer would (input_images must be a zip, given
inline or as one of this fake's files, holding at least one image; steps 3-6000), then
moves on with each poll like a prediction: `starting` for the fake's `starting_polls`,
`processing` for `processing_polls` (tqdm-like log lines with step and loss), then
`succeeded` with `{"version": "<destination>:<hash>", "weights": ...}`. The new version
is registered in `FakeReplicate.versions`, so predictions can run it at once.
Model or destination names containing "does-not-exist" answer 404.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import tarfile
import threading
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from tests.fakes.replicate_server import FakeReplicate

#: What :meth:`FakeTrainings.fail_next` can inject.
TRAINING_FAILURES = ("failed", "canceled", "rate_limit", "server_error")
_DEFAULT_ERRORS = {
    "failed": "Training failed: CUDA out of memory at step 2",
    "rate_limit": "Request was throttled. Expected available in 1 second.",
    "server_error": "Internal server error",
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_TERMINAL = ("succeeded", "failed", "canceled")

Handler = Callable[[Request, Any], Awaitable[Response]]


class _Refusal(Exception):
    """Answered as RFC 7807 problem details, as Replicate does."""

    def __init__(
        self, status: int, detail: str, title: str = "Error", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title
        self.headers = headers or {}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Training:
    id: str
    model: str
    version: str
    destination: str
    input: dict[str, Any]
    created_at: str
    fate: tuple[str, str | None] | None = None
    status: str = "starting"
    polls: int = 0
    logs: str = ""
    output: Any = None
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class FakeTrainings:
    def __init__(self, fake: FakeReplicate) -> None:
        self._fake = fake
        self._lock = threading.Lock()
        self.trainings: dict[str, _Training] = {}
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id → (name, type, bytes)
        self._failures: list[tuple[str, str | None, str | None]] = []

    def reset(self) -> None:
        with self._lock:
            self.trainings.clear()
            self.files.clear()
            self._failures.clear()

    def fail_next(
        self, kind: str, message: str | None = None, *, retry_after: float | str | None = None
    ) -> None:
        """The next training create answers 429/500 (rate_limit, server_error; with a
        `Retry-After` header when `retry_after` is given), or the next training is
        created and ends `failed` or `canceled` instead of succeeding."""
        if kind not in TRAINING_FAILURES:
            raise ValueError(f"unknown failure {kind!r}; known: {', '.join(TRAINING_FAILURES)}")
        header = None if retry_after is None else str(retry_after)
        with self._lock:
            self._failures.append((kind, message, header))

    def training(self, training_id: str) -> dict[str, Any]:
        with self._lock:
            return self._json(self.trainings[training_id])

    def routes(self, api: Callable[[Handler], Any]) -> list[Route]:
        """Routes for FakeReplicate's app; `api` wraps a handler with record/auth/latency."""

        def refusing(handler: Handler) -> Any:
            async def wrapped(request: Request, body: Any) -> Response:
                try:
                    return await handler(request, body)
                except _Refusal as refusal:
                    return JSONResponse(
                        {
                            "title": refusal.title,
                            "detail": refusal.detail,
                            "status": refusal.status,
                        },
                        status_code=refusal.status,
                        headers=refusal.headers,
                        media_type="application/problem+json",
                    )

            return api(wrapped)

        base = "/v1/models/{owner}/{name}"
        return [
            Route("/v1/files", refusing(self._upload), methods=["POST"]),
            Route("/v1/files/{id}/download", refusing(self._download), methods=["GET"]),
            Route(base, refusing(self._model), methods=["GET"]),
            Route(
                f"{base}/versions/{{version}}/trainings", refusing(self._create), methods=["POST"]
            ),
            Route("/v1/trainings/{id}", refusing(self._get), methods=["GET"]),
            Route("/v1/trainings/{id}/cancel", refusing(self._cancel), methods=["POST"]),
            Route("/trainings/{id}/weights.tar", self._weights, methods=["GET"]),
        ]

    # -- files --------------------------------------------------------------------------

    async def _upload(self, request: Request, body: Any) -> Response:
        form = await request.form()
        upload = form.get("content")
        if upload is None or isinstance(upload, str):
            raise _Refusal(422, "- content: a file is required")
        data = await upload.read()
        file_id = uuid.uuid4().hex[:24]
        content_type = upload.content_type or "application/octet-stream"
        with self._lock:
            self.files[file_id] = (upload.filename or "file", content_type, data)
        return JSONResponse(
            {
                "id": file_id,
                "name": upload.filename,
                "content_type": content_type,
                "size": len(data),
                "etag": hashlib.md5(data).hexdigest(),
                "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
                "metadata": {},
                "created_at": _now(),
                "expires_at": None,
                "urls": {"get": f"{self._fake.base_url}/v1/files/{file_id}/download"},
            },
            status_code=201,
        )

    async def _download(self, request: Request, body: Any) -> Response:
        with self._lock:
            found = self.files.get(request.path_params["id"])
        if found is None:
            raise _Refusal(404, "The requested resource could not be found.", "Not found")
        _name, content_type, data = found
        return Response(data, media_type=content_type)

    # -- models ---------------------------------------------------------------------------

    async def _model(self, request: Request, body: Any) -> Response:
        owner, name = request.path_params["owner"], request.path_params["name"]
        if "does-not-exist" in f"{owner}/{name}":
            raise _Refusal(404, "The requested resource could not be found.", "Not found")
        version = _version_for(f"{owner}/{name}")
        return JSONResponse(
            {
                "url": f"https://replicate.com/{owner}/{name}",
                "owner": owner,
                "name": name,
                "description": "fake model",
                "visibility": "public",
                "github_url": None,
                "paper_url": None,
                "license_url": None,
                "run_count": 0,
                "cover_image_url": None,
                "default_example": None,
                "latest_version": {
                    "id": version,
                    "created_at": "2024-01-01T00:00:00.000000Z",
                    "cog_version": "0.9.4",
                    "openapi_schema": {},
                },
            }
        )

    # -- trainings ------------------------------------------------------------------------

    async def _create(self, request: Request, body: Any) -> Response:
        owner, name = request.path_params["owner"], request.path_params["name"]
        version = request.path_params["version"]
        failure = self._take({"rate_limit", "server_error"})
        if failure is not None:
            kind, message, retry_after = failure
            status = 429 if kind == "rate_limit" else 500
            headers = {"retry-after": retry_after} if retry_after else None
            raise _Refusal(status, message or _DEFAULT_ERRORS[kind], headers=headers)
        if "does-not-exist" in f"{owner}/{name}" or version != _version_for(f"{owner}/{name}"):
            raise _Refusal(404, "The requested resource could not be found.", "Not found")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise _Refusal(
                422, "- input: Invalid type. Expected: object", "Input validation failed"
            )
        destination = body.get("destination")
        if not isinstance(destination, str) or destination.count("/") != 1:
            raise _Refusal(422, "- destination: must be owner/name", "Input validation failed")
        if "does-not-exist" in destination:
            raise _Refusal(404, "The specified training destination does not exist", "Not found")
        inputs = body["input"]
        self._validate(inputs)
        training = _Training(
            id=uuid.uuid4().hex[:26],
            model=f"{owner}/{name}",
            version=version,
            destination=destination,
            input=inputs,
            created_at=_now(),
            fate=self._fate(),
        )
        with self._lock:
            self.trainings[training.id] = training
            answer = self._json(training)
        return JSONResponse(answer, status_code=201)

    def _validate(self, inputs: dict[str, Any]) -> None:
        images = inputs.get("input_images")
        if not isinstance(images, str):
            raise _Refusal(422, "- input.input_images: required", "Input validation failed")
        data = self._fetch(images)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            raise _Refusal(
                422, "- input.input_images: not a zip file", "Input validation failed"
            ) from None
        if not any(n.lower().endswith(_IMAGE_SUFFIXES) for n in names):
            raise _Refusal(
                422, "- input.input_images: no images in the zip", "Input validation failed"
            )
        steps = inputs.get("steps", 1000)
        if not isinstance(steps, int) or not 3 <= steps <= 6000:
            raise _Refusal(422, "- input.steps: must be from 3 to 6000", "Input validation failed")

    def _fetch(self, reference: str) -> bytes:
        """input_images as a data URI or a link to one of this fake's uploaded files."""
        if reference.startswith("data:"):
            try:
                return base64.b64decode(reference.partition(",")[2], validate=True)
            except binascii.Error:
                raise _Refusal(422, "- input.input_images: bad data URI") from None
        prefix = f"{self._fake.base_url}/v1/files/"
        if reference.startswith(prefix) and reference.endswith("/download"):
            file_id = reference[len(prefix) : -len("/download")]
            with self._lock:
                found = self.files.get(file_id)
            if found is not None:
                return found[2]
        raise _Refusal(422, f"- input.input_images: could not download {reference[:80]}")

    async def _get(self, request: Request, body: Any) -> Response:
        with self._lock:
            training = self.trainings.get(request.path_params["id"])
        if training is None:
            raise _Refusal(404, "The requested resource could not be found.", "Not found")
        self._advance(training)
        with self._lock:
            return JSONResponse(self._json(training))

    async def _cancel(self, request: Request, body: Any) -> Response:
        with self._lock:
            training = self.trainings.get(request.path_params["id"])
            if training is None:
                raise _Refusal(404, "The requested resource could not be found.", "Not found")
            if training.status not in _TERMINAL:
                training.status = "canceled"
                training.completed_at = _now()
            return JSONResponse(self._json(training))

    async def _weights(self, request: Request) -> Response:
        training_id = request.path_params["id"]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            payload = f"fake LoRA weights of {training_id}".encode()
            info = tarfile.TarInfo("output/flux_train_replicate/lora.safetensors")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        return Response(out.getvalue(), media_type="application/x-tar")

    # -- a training's life ------------------------------------------------------------

    def _take(self, kinds: set[str]) -> tuple[str, str | None, str | None] | None:
        with self._lock:
            for index, failure in enumerate(self._failures):
                if failure[0] in kinds:
                    del self._failures[index]
                    return failure
        return None

    def _fate(self) -> tuple[str, str | None] | None:
        taken = self._take({"failed", "canceled"})
        return None if taken is None else (taken[0], taken[1])

    def _advance(self, training: _Training) -> None:
        starting, processing = self._fake.starting_polls, self._fake.processing_polls
        with self._lock:
            if training.status in _TERMINAL:
                return
            training.polls += 1
            if training.polls <= starting:
                return
            training.started_at = training.started_at or _now()
            done = training.polls - starting
            total_steps = int(training.input.get("steps", 1000))
            training.logs = _logs(min(done, processing), processing + 1, total_steps)
            if done <= processing:
                training.status = "processing"
                return
            training.completed_at = _now()
            training.metrics = {"predict_time": 0.01 * total_steps}
            kind, message = training.fate or ("succeeded", None)
            if kind == "failed":
                training.status, training.error = "failed", message or _DEFAULT_ERRORS["failed"]
                return
            if kind == "canceled":
                training.status = "canceled"
                return
            training.logs = _logs(processing + 1, processing + 1, total_steps)
            new_version = _version_for(f"{training.destination}#{training.id}")
            training.status = "succeeded"
            training.output = {
                "version": f"{training.destination}:{new_version}",
                "weights": f"{self._fake.base_url}/trainings/{training.id}/weights.tar",
            }
        self._fake.versions[new_version] = training.destination  # runnable at once

    def _json(self, training: _Training) -> dict[str, Any]:
        base = f"{self._fake.base_url}/v1/trainings/{training.id}"
        return {
            "id": training.id,
            "model": training.model,
            "version": training.version,
            "destination": training.destination,
            "input": training.input,
            "logs": training.logs,
            "output": training.output,
            "error": training.error,
            "status": training.status,
            "source": "api",
            "created_at": training.created_at,
            "started_at": training.started_at,
            "completed_at": training.completed_at,
            "metrics": dict(training.metrics),
            "urls": {"get": base, "cancel": f"{base}/cancel"},
        }


def _version_for(model: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, model).hex * 2


def _logs(poll: int, polls: int, total_steps: int) -> str:
    """ostris-style tqdm lines, one per poll so far, each with its step and loss."""
    lines = ["Loading dataset...", "Training LoRA"]
    for done in range(1, poll + 1):
        step = round(total_steps * done / polls)
        percent = round(100 * step / total_steps)
        loss = 0.5 * 0.8**done
        lines.append(
            f"flux_train_replicate: {percent:3d}%|{'█' * (percent // 10):<10}| "
            f"{step}/{total_steps} [00:0{done}<00:00, 1.00it/s, lr: 4.0e-04 loss: {loss:.3e}]"
        )
    return "\n".join(lines) + "\n"
