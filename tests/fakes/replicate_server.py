"""A fake Replicate HTTP API on 127.0.0.1 for offline tests and benchmarks.

Why: a mocked client would hide what the real ``replicate`` client sends and how it reads
answers (paths, the version-vs-model endpoints, RFC 7807 errors, prediction fields it
insists on). This server speaks Replicate's HTTP API wire format (replicate.com/docs), so
the REAL client can be pointed at it with ``base_url=fake.base_url`` (no ``/v1``: the
client's paths include it).

A prediction moves on with each poll (``GET /v1/predictions/{id}``): ``starting`` for
``starting_polls`` polls, ``processing`` for ``processing_polls`` polls (logs grow with
tqdm-like "NN%|" lines), then ``succeeded`` with ``metrics.predict_time`` and outputs
served by the fake itself (``/files/...``; or ``data:`` URIs with
``output_mode="data"``). Pictures depend on prompt + seed, so different seeds differ.
With ``intermediate_outputs`` on, a prediction of several images lists those made so far
in ``output`` while it is processing, as a model that yields its outputs one by one does
(replicate-python's ``Prediction.output_iterator`` reads the growing list).
Video models (``tests/fakes/replicate_videos.py``) answer with one small H.264 MP4.

In-process::

    with FakeReplicate() as fake:
        client = replicate.Client(fake.api_token, base_url=fake.base_url)

As a process (browser tests, the overhead benchmark)::

    python -m tests.fakes.replicate_server --port 8766   # prints "READY <base_url>"

Steering over HTTP (no auth, not recorded): ``POST /_fake/fail_next`` (JSON arguments of
:meth:`FakeReplicate.fail_next`), ``POST /_fake/answer_next`` (those of
:meth:`FakeReplicate.answer_next`), ``POST /_fake/configure`` (``latency_s``,
``starting_polls``, ``processing_polls``, ``output_mode``, ``intermediate_outputs``),
``POST /_fake/reset``,
``GET /_fake/requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import io
import json
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageOps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes import replicate_videos
from tests.fakes.openai_server import make_image
from tests.fakes.replicate_trainings import FakeTrainings
from tests.fakes.threaded_server import ThreadedServer

__all__ = ["FAILURE_KINDS", "FakeReplicate", "RecordedRequest", "DEFAULT_TOKEN"]

DEFAULT_TOKEN = "r8_fake_token_for_tests"
#: What :meth:`FakeReplicate.fail_next` can inject.
FAILURE_KINDS = ("rate_limit", "server_error", "payment", "failed", "canceled", "nsfw")
_CREATE_FAILURES = {"rate_limit": 429, "server_error": 500, "payment": 402}
_FATES = frozenset({"failed", "canceled", "nsfw"})
_ENDED = ("succeeded", "failed", "canceled")
_DEFAULT_MESSAGES = {
    "rate_limit": "Request was throttled. Expected available in 1 second.",
    "server_error": "Internal server error",
    "payment": "You have insufficient credit to run this model. Go to "
    "https://replicate.com/account/billing#billing to purchase credit.",
    "failed": "CUDA out of memory. Tried to allocate 2.00 GiB",
    "nsfw": "All generated images contained NSFW content. Try running it again with a "
    "different prompt.",
}
_TITLES = {
    401: "Unauthenticated",
    402: "Insufficient credit",
    404: "Not found",
    422: "Input validation failed",
    429: "Request was throttled",
    500: "Internal server error",
}
# cog-flux's table, plus the ratios other models add (about 1 MP each).
_ASPECTS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "5:4": (1088, 896),
    "4:5": (896, 1088),
    "2:1": (1408, 704),
    "1:2": (704, 1408),
    "16:10": (1280, 800),
    "10:16": (800, 1280),
    "3:1": (1536, 512),
    "1:3": (512, 1536),
}
_SPECIAL_ASPECTS = ("custom", "match_input_image")
# Image-model inputs, and video models' first frames (validated as images the same way).
_IMAGE_INPUTS = ("input_image", "image", "first_frame_image", "start_image")
_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
}
_VERSION = re.compile(r"^[0-9a-f]{64}$")
_SDXL_VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake saw it. ``headers`` are lower-cased, without the token."""

    path: str
    method: str
    headers: dict[str, str]
    json: Any
    query: dict[str, str]
    at: float  # time.monotonic() on arrival, so tests can measure waits between requests
    authorized: bool


@dataclass
class _Failure:
    kind: str
    remaining: int
    retry_after: str | None
    message: str | None


@dataclass
class _Answer:
    """A malformed or unexpected answer queued by :meth:`FakeReplicate.answer_next`."""

    path: re.Pattern[str]
    method: str | None
    body: bytes | None
    content_type: str
    status: int | None
    change: dict[str, Any]
    drop: tuple[str, ...]
    remaining: int


@dataclass
class _Prediction:
    id: str
    model: str
    version: str
    input: dict[str, Any]
    created_at: str
    fate: _Failure | None = None
    status: str = "starting"
    polls: int = 0
    logs: str = ""
    output: Any = None
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    started_at: str | None = None
    completed_at: str | None = None
    started: float | None = None
    seed: int = 0


class _ApiError(Exception):
    """Raised inside handlers; answered as RFC 7807 problem details."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        invalid_fields: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
        self.headers = headers or {}
        self.invalid_fields = invalid_fields


def _invalid(field_name: str, description: str) -> _ApiError:
    return _ApiError(
        422,
        f"- {field_name}: {description}\n",
        invalid_fields=[{"type": "invalid", "field": field_name, "description": description}],
    )


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeReplicate(ThreadedServer):
    """Fake Replicate API served by uvicorn in a background thread on 127.0.0.1.

    Tests may change ``latency_s`` (delay before every API and file response),
    ``starting_polls``, ``processing_polls``, ``output_mode`` ("url" or "data"),
    ``output_links`` (links every prediction answers instead of its own files) and
    ``api_token`` (None accepts any bearer token) at any time.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        api_token: str | None = DEFAULT_TOKEN,
        latency_s: float = 0.0,
        starting_polls: int = 0,
        processing_polls: int = 2,
        output_mode: str = "url",
        intermediate_outputs: bool = False,
    ) -> None:
        self._defaults: dict[str, Any] = {
            "api_token": api_token,
            "latency_s": latency_s,
            "starting_polls": starting_polls,
            "processing_polls": processing_polls,
            "output_mode": output_mode,
            "intermediate_outputs": intermediate_outputs,
        }
        self.api_token = api_token
        self.latency_s = latency_s
        self.starting_polls = starting_polls
        self.processing_polls = processing_polls
        self.output_mode = output_mode
        self.intermediate_outputs = intermediate_outputs
        # Links the next predictions answer instead of their own files (a hostile model's
        # outputs, for the SSRF tests); None: the fake's own /files/ links.
        self.output_links: list[str] | None = None
        # Opt-in (parallel-provider tests, the throughput benchmark): answer each create
        # already finished, as Replicate's sync mode does, so one request makes an image.
        self.finish_on_create = False
        # (method, path, status, start, end) of every request answered, time.monotonic().
        self.spans: list[tuple[str, str, int, float, float]] = []
        self.versions: dict[str, str] = {_SDXL_VERSION: "stability-ai/sdxl"}
        self._init_server(port)
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._answers: list[_Answer] = []
        self._predictions: dict[str, _Prediction] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._image_cache: dict[tuple[Any, ...], bytes] = {}
        self.trainings = FakeTrainings(self)  # LoRA trainings and the files API
        self.app = self._build_app()

    name = "fake Replicate server"

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fetch_allow(self) -> str:
        """The ATELIER_FETCH_ALLOW_HOSTS entry that lets the app download this fake's files
        (they are on 127.0.0.1, which the guarded downloader refuses otherwise)."""
        return f"127.0.0.1:{self.port}"

    # -- what tests read and steer ---------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot (copy) of every API and file request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, path_pattern: str, method: str | None = None) -> list[RecordedRequest]:
        """Requests whose path matches the regex ``path_pattern`` (searched, not anchored)."""
        pattern = re.compile(path_pattern)
        return [
            r
            for r in self.requests
            if pattern.search(r.path) and (method is None or r.method == method)
        ]

    def creates(self) -> list[RecordedRequest]:
        """Every request that tried to create a prediction (model or version endpoint)."""
        return self.requests_to(r"^/v1/(models/[^/]+/[^/]+/)?predictions$", "POST")

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        with self._lock:
            return self._json(self._predictions[prediction_id])

    def predictions(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._json(p) for p in self._predictions.values()]

    def reset(self) -> None:
        """Forget requests, predictions and queued failures; restore the settings given
        to the constructor (so one server can serve many tests)."""
        with self._lock:
            self._requests.clear()
            self._failures.clear()
            self._answers.clear()
            self._predictions.clear()
            self._files.clear()
        self.trainings.reset()
        for name, value in self._defaults.items():
            setattr(self, name, value)
        self.output_links = None
        self.finish_on_create = False
        with self._lock:
            self.spans.clear()
        self.versions = {_SDXL_VERSION: "stability-ai/sdxl"}

    def configure(self, **settings: Any) -> None:
        names = ("latency_s", "starting_polls", "processing_polls", "output_mode")
        for name in (*names, "intermediate_outputs"):
            if name in settings:
                setattr(self, name, settings[name])

    def fail_next(
        self,
        kind: str,
        *,
        times: int = 1,
        retry_after: float | str | None = None,
        message: str | None = None,
    ) -> None:
        """Make the next ``times`` creates go wrong in one of :data:`FAILURE_KINDS` ways.

        rate_limit / server_error / payment answer the create with 429 / 500 / 402
        (``retry_after`` becomes a ``Retry-After`` header); failed / nsfw / canceled let
        the prediction be created and end it that way instead of succeeding.
        """
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure {kind!r}; known: {', '.join(FAILURE_KINDS)}")
        header = None if retry_after is None else str(retry_after)
        with self._lock:
            self._failures.append(_Failure(kind, times, header, message))

    def answer_next(
        self,
        path_pattern: str,
        *,
        method: str | None = None,
        body: Any = None,
        content_type: str = "application/json",
        status: int | None = None,
        change: dict[str, Any] | None = None,
        drop: tuple[str, ...] | list[str] = (),
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests whose path matches the regex
        ``path_pattern`` (and ``method``) other than Replicate would: malformed or
        unexpected answers, for tests of how the app reads them.

        The request is handled as usual first (a create still creates its prediction, as
        when a real answer is garbled on the way); then with ``body`` its answer is
        replaced by exactly that (str or bytes as they are, anything else as JSON, status
        200 unless ``status``), else the usual JSON answer gets the fields in ``change``
        set and those in ``drop`` removed.
        """
        if body is None or isinstance(body, bytes):
            raw = body
        else:
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        answer = _Answer(
            re.compile(path_pattern),
            method,
            raw,
            content_type,
            status,
            dict(change or {}),
            tuple(drop),
            times,
        )
        with self._lock:
            self._answers.append(answer)

    def _take_answer(self, request: Request) -> _Answer | None:
        with self._lock:
            for answer in self._answers:
                if answer.path.search(request.url.path) and answer.method in (
                    None,
                    request.method,
                ):
                    answer.remaining -= 1
                    if answer.remaining <= 0:
                        self._answers.remove(answer)
                    return answer
        return None

    def _take_failure(self, kinds: frozenset[str] | dict[str, int]) -> _Failure | None:
        """The first queued failure of one of `kinds`, counted down."""
        with self._lock:
            for failure in self._failures:
                if failure.kind in kinds:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    # -- app -------------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        Handler = Callable[[Request, Any], Awaitable[Response]]

        def api(handler: Handler, auth: bool = True) -> Any:
            async def endpoint(request: Request) -> Response:
                return await self._handle(request, handler, auth)

            return endpoint

        routes = [
            Route(
                "/v1/models/{owner}/{name}/predictions",
                api(self._create_for_model),
                methods=["POST"],
            ),
            Route(
                "/v1/models/{owner}/{name}/versions/{version}",
                api(self._get_version),
                methods=["GET"],
            ),
            Route("/v1/predictions", api(self._create_for_version), methods=["POST"]),
            Route("/v1/predictions/{id}", api(self._get_prediction), methods=["GET"]),
            Route("/v1/predictions/{id}/cancel", api(self._cancel), methods=["POST"]),
            Route("/files/{name}", api(self._file, auth=False), methods=["GET"]),
            Route("/_fake/requests", self._control_requests, methods=["GET"]),
            Route("/_fake/reset", self._control_reset, methods=["POST"]),
            Route("/_fake/fail_next", self._control_fail_next, methods=["POST"]),
            Route("/_fake/configure", self._control_configure, methods=["POST"]),
            Route("/_fake/answer_next", self._control_answer_next, methods=["POST"]),
            *self.trainings.routes(api),
            Route(
                "/{rest:path}",
                api(self._not_found),
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]
        return Starlette(routes=routes)

    async def _handle(self, request: Request, handler: Any, auth: bool) -> Response:
        """Record, delay, authenticate, then run the endpoint; errors become RFC 7807."""
        raw = await request.body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"_unparsed": raw[:200].decode("utf-8", "replace")}
        authorized = self._authorized(request)
        recorded = RecordedRequest(
            path=request.url.path,
            method=request.method,
            headers={k: v for k, v in request.headers.items() if k != "authorization"},
            json=body,
            query=dict(request.query_params),
            at=time.monotonic(),
            authorized=authorized,
        )
        with self._lock:
            self._requests.append(recorded)
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            if auth and not authorized:
                raise _ApiError(401, "You did not pass a valid authentication token")
            response = await handler(request, body)
        except _ApiError as error:
            response = _problem(error)
        except Exception as exc:  # a bug in the fake: say so loudly
            traceback.print_exc(file=sys.stderr)
            response = _problem(_ApiError(500, f"fake server error: {exc!r}"))
        with self._lock:
            span = (request.method, request.url.path, response.status_code, recorded.at)
            self.spans.append((*span, time.monotonic()))
        answer = self._take_answer(request)
        return response if answer is None else _altered(response, answer)

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token") or not token.strip():
            return False
        return self.api_token is None or token.strip() == self.api_token

    # -- endpoints -------------------------------------------------------------------

    async def _create_for_model(self, request: Request, body: Any) -> Response:
        owner, name = request.path_params["owner"], request.path_params["name"]
        if "does-not-exist" in f"{owner}/{name}":
            raise _ApiError(404, "The requested resource could not be found.")
        version = _fake_version(f"{owner}/{name}")
        return self._create(f"{owner}/{name}", version, body)

    async def _create_for_version(self, request: Request, body: Any) -> Response:
        version = (body or {}).get("version") if isinstance(body, dict) else None
        if not isinstance(version, str) or not _VERSION.match(version.rpartition(":")[2]):
            raise _ApiError(422, "Invalid version or not permitted")
        version = version.rpartition(":")[2]
        model = self.versions.get(version, "fake-owner/versioned-model")
        return self._create(model, version, body)

    def _create(self, model: str, version: str, body: Any) -> Response:
        failure = self._take_failure(_CREATE_FAILURES)
        if failure is not None:
            headers = {"retry-after": failure.retry_after} if failure.retry_after else {}
            status = _CREATE_FAILURES[failure.kind]
            detail = failure.message or _DEFAULT_MESSAGES[failure.kind]
            raise _ApiError(status, detail, headers)
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            raise _invalid("input", "Invalid type. Expected: object, given: null")
        inputs = body["input"]
        _validate(inputs)
        try:
            replicate_videos.validate(model, inputs)
        except replicate_videos.VideoInputError as exc:
            raise _invalid(exc.field, exc.description) from None
        fate = self._take_failure(_FATES)
        seed = inputs.get("seed")
        prediction = _Prediction(
            id=uuid.uuid4().hex[:26],
            model=model,
            version=version,
            input=inputs,
            created_at=_now(),
            fate=fate,
            seed=seed if isinstance(seed, int) else int.from_bytes(uuid.uuid4().bytes[:4], "big"),
        )
        with self._lock:
            self._predictions[prediction.id] = prediction
        while self.finish_on_create and prediction.status not in _ENDED:
            self._advance(prediction)  # opt-in: answered finished (see __init__)
        with self._lock:
            answer = self._json(prediction)
        return JSONResponse(answer, status_code=201)

    async def _get_prediction(self, request: Request, body: Any) -> Response:
        with self._lock:
            prediction = self._predictions.get(request.path_params["id"])
        if prediction is None:
            raise _ApiError(404, "The requested resource could not be found.")
        self._advance(prediction)
        with self._lock:
            return JSONResponse(self._json(prediction))

    async def _cancel(self, request: Request, body: Any) -> Response:
        with self._lock:
            prediction = self._predictions.get(request.path_params["id"])
            if prediction is None:
                raise _ApiError(404, "The requested resource could not be found.")
            if prediction.status not in ("succeeded", "failed", "canceled"):
                prediction.status = "canceled"
                prediction.completed_at = _now()
            return JSONResponse(self._json(prediction))

    async def _get_version(self, request: Request, body: Any) -> Response:
        version = request.path_params["version"]
        if not _VERSION.match(version):
            raise _ApiError(404, "The requested resource could not be found.")
        schema = {
            "openapi": "3.0.2",
            "components": {"schemas": {"Output": {"type": "array", "items": {"type": "string"}}}},
        }
        return JSONResponse(
            {
                "id": version,
                "created_at": "2024-01-01T00:00:00.000000Z",
                "cog_version": "0.9.4",
                "openapi_schema": schema,
            }
        )

    async def _file(self, request: Request, body: Any) -> Response:
        with self._lock:
            found = self._files.get(request.path_params["name"])
        if found is None:
            return Response(b"not found", status_code=404)
        data, mime = found
        return Response(data, media_type=mime)

    async def _not_found(self, request: Request, body: Any) -> Response:
        raise _ApiError(404, "The requested resource could not be found.")

    # -- the prediction's life -------------------------------------------------------

    def _advance(self, prediction: _Prediction) -> None:
        """One poll moves the prediction one step along its scripted life."""
        with self._lock:
            if prediction.status in ("succeeded", "failed", "canceled"):
                return
            prediction.polls += 1
            polls, starting, processing = (
                prediction.polls,
                self.starting_polls,
                self.processing_polls,
            )
            if polls <= starting:
                return
            if prediction.started is None:
                prediction.started = time.monotonic()
                prediction.started_at = _now()
            step = polls - starting
            total = processing + 1
            prediction.logs = _logs(prediction.seed, min(step, total), total)
            if step <= processing:
                prediction.status = "processing"
                listing = self.intermediate_outputs and "num_outputs" in prediction.input
            else:
                listing = False
            fate = prediction.fate
        if step <= processing:
            if listing:  # the outputs made so far, as a model yielding them one by one
                count = int(prediction.input.get("num_outputs", 1))
                made = self._render(prediction, upto=step * count // (processing + 1))
                with self._lock:
                    prediction.output = made or None
            return
        if fate is not None and fate.kind in ("failed", "nsfw"):
            self._finish(prediction, "failed", error=fate.message or _DEFAULT_MESSAGES[fate.kind])
        elif fate is not None and fate.kind == "canceled":
            self._finish(prediction, "canceled")
        else:
            output = self._render(prediction)
            self._finish(prediction, "succeeded", output=output)

    def _finish(
        self, prediction: _Prediction, status: str, output: Any = None, error: str | None = None
    ) -> None:
        with self._lock:
            if prediction.status in ("succeeded", "failed", "canceled"):
                return  # cancelled meanwhile
            prediction.status, prediction.output, prediction.error = status, output, error
            prediction.completed_at = _now()
            elapsed = time.monotonic() - (prediction.started or time.monotonic())
            prediction.metrics = {"predict_time": round(max(elapsed, 0.001), 6)}
            if status == "succeeded":
                prediction.metrics["total_time"] = prediction.metrics["predict_time"]
                count = len(output) if isinstance(output, list) else 1
                prediction.metrics["image_count"] = count

    def _render(self, prediction: _Prediction, upto: int | None = None) -> Any:
        """The outputs: a list when the model takes num_outputs, else one link; `upto`:
        only the first so many images (a list), as listed while processing."""
        inputs = prediction.input
        if self.output_links is not None:
            links = list(self.output_links)
            return links if "num_outputs" in inputs else links[0]
        if replicate_videos.is_video(prediction.model):  # one MP4
            data = replicate_videos.clip(prediction.model, inputs, prediction.seed)
            if self.output_mode == "data":
                return f"data:video/mp4;base64,{base64.b64encode(data).decode('ascii')}"
            with self._lock:
                self._files[f"{prediction.id}.mp4"] = (data, "video/mp4")
            return f"{self.base_url}/files/{prediction.id}.mp4"
        count = int(inputs.get("num_outputs", 1))
        if upto is not None:
            count = min(count, upto)
        fmt = str(inputs.get("output_format", "png"))
        pil_format, mime = _FORMATS.get(fmt, _FORMATS["png"])
        links = []
        for index in range(count):
            data = self._picture(prediction, index, pil_format)
            name = f"{prediction.id}-{index}.{fmt}"
            if self.output_mode == "data":
                links.append(f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}")
            else:
                with self._lock:
                    self._files[name] = (data, mime)
                links.append(f"{self.base_url}/files/{name}")
        return links if "num_outputs" in inputs or upto is not None else links[0]

    def _picture(self, prediction: _Prediction, index: int, pil_format: str) -> bytes:
        inputs = prediction.input
        source = next((inputs[k] for k in _IMAGE_INPUTS if k in inputs), None)
        width, height = _output_size(inputs, _decode(source) if source else None)
        key = (inputs.get("prompt"), prediction.seed, index, width, height, pil_format, source)
        with self._lock:
            cached = self._image_cache.get(key)
        if cached is not None:
            return cached
        if source:
            image = ImageOps.invert(_decode(source).convert("RGB")).resize((width, height))
            if index:
                marker = make_image(f"{inputs.get('prompt')}|{prediction.seed}", index, 8, 8)
                image.paste(marker, (0, 0))
        else:
            image = make_image(f"{inputs.get('prompt')}|{prediction.seed}", index, width, height)
        out = io.BytesIO()
        image.convert("RGB").save(
            out, pil_format, **({"compress_level": 1} if pil_format == "PNG" else {})
        )
        data = out.getvalue()
        with self._lock:
            self._image_cache[key] = data
        return data

    def _json(self, prediction: _Prediction) -> dict[str, Any]:
        base = f"{self.base_url}/v1/predictions/{prediction.id}"
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "logs": prediction.logs,
            "output": prediction.output,
            "data_removed": False,
            "error": prediction.error,
            "status": prediction.status,
            "source": "api",
            "created_at": prediction.created_at,
            "started_at": prediction.started_at,
            "completed_at": prediction.completed_at,
            "metrics": dict(prediction.metrics),
            "urls": {
                "get": base,
                "cancel": f"{base}/cancel",
                "web": f"https://replicate.com/p/{prediction.id}",
            },
        }

    # -- control endpoints -----------------------------------------------------------

    async def _control_requests(self, request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "path": r.path,
                    "method": r.method,
                    "headers": r.headers,
                    "json": r.json,
                    "authorized": r.authorized,
                }
                for r in self.requests
            ]
        )

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _control_fail_next(self, request: Request) -> Response:
        args = await request.json()
        self.fail_next(args.pop("kind"), **args)
        return JSONResponse({"ok": True})

    async def _control_configure(self, request: Request) -> Response:
        self.configure(**(await request.json()))
        return JSONResponse({"ok": True})

    async def _control_answer_next(self, request: Request) -> Response:
        args = await request.json()
        self.answer_next(args.pop("path_pattern"), **args)
        return JSONResponse({"ok": True})


# --------------------------------------------------------------------------- helpers


def _problem(error: _ApiError) -> JSONResponse:
    body: dict[str, Any] = {
        "title": _TITLES.get(error.status, "Error"),
        "detail": error.detail,
        "status": error.status,
    }
    if error.invalid_fields:
        body["invalid_fields"] = error.invalid_fields
    return JSONResponse(
        body,
        status_code=error.status,
        headers=error.headers,
        media_type="application/problem+json",
    )


def _altered(response: Response, answer: _Answer) -> Response:
    """`response` as :meth:`FakeReplicate.answer_next` asked it to be instead."""
    status = answer.status or (200 if answer.body is not None else response.status_code)
    if answer.body is not None:
        return Response(answer.body, status_code=status, media_type=answer.content_type)
    data = json.loads(bytes(response.body))
    if isinstance(data, dict):
        data.update(answer.change)
        for name in answer.drop:
            data.pop(name, None)
    return JSONResponse(data, status_code=status)


def _fake_version(model: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, model).hex * 2


def _validate(inputs: dict[str, Any]) -> None:
    """The checks a Cog model's input schema would make (a representative few)."""
    prompt = inputs.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("input", "prompt is required")
    for name in ("width", "height"):
        if name in inputs:
            value = inputs[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise _invalid(f"input.{name}", "Invalid type. Expected: integer")
            if value % 8:
                raise _invalid(f"input.{name}", "Must be a multiple of 8")
            if not 64 <= value <= 4096:
                raise _invalid(f"input.{name}", "Must be between 64 and 4096")
    if "num_outputs" in inputs:
        count = inputs["num_outputs"]
        if not isinstance(count, int) or not 1 <= count <= 4:
            raise _invalid("input.num_outputs", "Must be less than or equal to 4")
    if "seed" in inputs and (
        not isinstance(inputs["seed"], int) or isinstance(inputs["seed"], bool)
    ):
        raise _invalid("input.seed", "Invalid type. Expected: integer")
    aspect = inputs.get("aspect_ratio")
    if aspect is not None and aspect not in _ASPECTS and aspect not in _SPECIAL_ASPECTS:
        choices = ", ".join([*_ASPECTS, *_SPECIAL_ASPECTS])
        raise _invalid(
            "input.aspect_ratio", f"aspect_ratio must be one of the following: {choices}"
        )
    images = {k: inputs[k] for k in (*_IMAGE_INPUTS, "mask") if k in inputs}
    decoded = {}
    for name, value in images.items():
        try:
            decoded[name] = _decode(value)
        except ValueError:
            raise _invalid(f"input.{name}", "could not be read as an image") from None
    if "mask" in decoded:
        source = next((decoded[k] for k in _IMAGE_INPUTS if k in decoded), None)
        if source is None:
            raise _invalid("input.mask", "a mask needs an image")
        if decoded["mask"].size != source.size:
            raise _invalid("input.mask", "mask and image must be the same size")


def _decode(value: Any) -> Image.Image:
    """A data: URI input image (the fake fetches no URLs)."""
    if not isinstance(value, str) or not value.startswith("data:") or "," not in value:
        raise ValueError("not a data URI")
    try:
        data = base64.b64decode(value.partition(",")[2], validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, OSError) as exc:
        raise ValueError(str(exc)) from None
    return image


def _output_size(inputs: dict[str, Any], source: Image.Image | None) -> tuple[int, int]:
    aspect = inputs.get("aspect_ratio")
    if "width" in inputs and "height" in inputs and aspect in (None, "custom"):
        return int(inputs["width"]), int(inputs["height"])
    if source is not None and aspect in (None, "match_input_image"):
        return source.size
    return _ASPECTS.get(str(aspect), (1024, 1024))


def _logs(seed: int, step: int, total: int) -> str:
    lines = [f"Using seed: {seed}"]
    for done in range(step + 1):
        percent = round(100 * done / total)
        bar = "█" * (percent // 10) + " " * (10 - percent // 10)
        lines.append(f"{percent:3d}%|{bar}| {done}/{total} [00:0{done}<00:00, 3.51it/s]")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- process mode


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; print "READY <base_url>" once the port answers."""
    parser = argparse.ArgumentParser(description="Fake Replicate API for offline tests.")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--api-token", default=DEFAULT_TOKEN, help="'' accepts any token")
    parser.add_argument("--starting-polls", type=int, default=0)
    parser.add_argument("--processing-polls", type=int, default=2)
    parser.add_argument("--output-mode", choices=("url", "data"), default="url")
    parser.add_argument("--finish-on-create", action="store_true", help="one request an image")
    args = parser.parse_args(argv)
    fake = FakeReplicate(
        port=args.port,
        api_token=args.api_token or None,
        latency_s=args.latency,
        starting_polls=args.starting_polls,
        processing_polls=args.processing_polls,
        output_mode=args.output_mode,
    ).start()
    fake.finish_on_create = args.finish_on_create
    return fake.serve_until_signalled(fake.base_url)


if __name__ == "__main__":
    raise SystemExit(main())
