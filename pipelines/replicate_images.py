"""Replicate through the official client's predictions API: create, poll, download.

Why not `replicate.run()`: it hides the prediction, so it can neither report progress nor
cancel a prediction the user stopped (which would keep running, and billing), and it takes
any status but "starting" as final (see hosted-apis.md). Here a prediction is created
with the project's own retry policy (the client never retries a POST), polled every
`poll_interval_s`, cancelled on Replicate whenever we stop waiting for it, and its
outputs are downloaded and checked to really be images.

How a request becomes a model's input is data, in `pipelines/replicate_models.py`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import re
import secrets
import urllib.parse
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput, transform_output
from replicate.prediction import Prediction

from memory.errors import (
    BackendError,
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    QuotaExhausted,
    RateLimited,
)
from memory.logging_setup import get_logger
from memory.png_metadata import open_image
from pipelines import replicate_models
from pipelines.base import Capabilities, GeneratedImage, ImageRequest, ImageResult, check_request
from pipelines.fetch_policy import FetchPolicy
from pipelines.guarded_fetch import GuardedFetcher, refused
from pipelines.progress import Progress
from pipelines.replicate_models import ModelRef, ReplicateModel

log = get_logger(__name__)

DEFAULT_MODEL = "black-forest-labs/flux-schnell"
TERMINAL = frozenset({"succeeded", "failed", "canceled"})
FIRST_POLL_S = 0.5  # fast models finish in about a second: look once before the interval
MAX_RETRY_WAIT_S = 60.0
CANCEL_TIMEOUT_S = 5.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
MAX_RANDOM_SEED = 2**31 - 1  # every model's seed input takes a signed 32-bit value
_PERCENT = re.compile(r"(\d{1,3})%\|")
_REFUSAL = re.compile(r"nsfw|safety|sensitive|moderat|flagged|E005|content polic", re.I)
_TOKEN_HINT = "check REPLICATE_API_TOKEN; it may be wrong, expired or revoked"

# The client's errors drop the response headers, so a response hook files `Retry-After`
# here for the create call that is waiting for it (a ContextVar, so concurrent
# generations never read each other's).
_retry_after_box: ContextVar[dict[str, str] | None] = ContextVar("replicate_retry_after")


async def _remember_retry_after(response: httpx.Response) -> None:
    box = _retry_after_box.get(None)
    if box is not None:
        box["retry-after"] = response.headers.get("retry-after", "")


@dataclass(frozen=True)
class _Connections:
    """Clients for one event loop: httpx connections cannot move between loops."""

    loop: asyncio.AbstractEventLoop
    api: replicate.Client
    files: GuardedFetcher  # outputs: provider-chosen URLs, so through the guard only
    transport: httpx.AsyncHTTPTransport


class ReplicateImages:
    id = "replicate"
    label = "Replicate"
    # What edit_image uses when the conversation's model cannot edit (e.g. flux-schnell).
    edit_model = "black-forest-labs/flux-kontext-pro"

    def __init__(
        self,
        api_token: str,
        model: str = DEFAULT_MODEL,
        *,
        base_url: str | None = None,
        poll_interval_s: float = 1.0,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_retry_wait_s: float = MAX_RETRY_WAIT_S,
        retry_backoff_s: float = 0.5,
        max_wait_s: float = 1800.0,
        fetch_policy: FetchPolicy | None = None,
    ) -> None:
        self.default_model = model
        self._token = api_token
        self._base_url = base_url
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._max_retries = max_retries
        self._max_retry_wait_s = max_retry_wait_s
        self._retry_backoff_s = retry_backoff_s
        self._max_wait_s = max_wait_s
        # No allow-list unless given: outputs on private addresses are refused.
        self._fetch_policy = fetch_policy or FetchPolicy(timeout_s=timeout_s)
        self._connections: _Connections | None = None

    # -- the ImageBackend interface ----------------------------------------------------

    def capabilities(self, model: str | None = None) -> Capabilities:
        return replicate_models.lookup(model or self.default_model).capabilities

    def suggested_models(self) -> list[str]:
        return list(dict.fromkeys([self.default_model, *replicate_models.MODELS]))

    async def generate(
        self, request: ImageRequest, progress: Progress | None = None
    ) -> ImageResult:
        # 1. Refuse what cannot be honoured, before anything is spent.
        model = (request.model or self.default_model).strip()
        ref = replicate_models.parse_ref(model)
        spec = replicate_models.lookup(model)
        checked = check_request(self, replace(request, model=model))
        label = f"{self.label} {model}"
        size_given = bool(request.size)
        _check_model_limits(spec, checked, label, size_given)
        # 2. The model's input, as data says (replicate_models); a seed is always sent.
        seed = _seed_to_send(spec, checked.seed)
        image_uri, mask_uri = None, None
        if checked.images:
            image_uri, mask_uri = await asyncio.to_thread(_encode_images, spec, checked)
        inputs = replicate_models.build_input(
            spec,
            checked,
            seed=seed,
            size_given=size_given,
            image_uri=image_uri,
            mask_uri=mask_uri,
        )
        _check_json(inputs)
        # 3. Create (retrying as Replicate asks) and poll until it ends.
        conns = self._connect()
        _report(progress, 0, "sending to Replicate")
        prediction = await self._create(conns.api, ref, spec, inputs, label, progress)
        log.info("replicate_prediction_created", prediction=prediction.id, model=model)
        prediction = await self._wait(conns.api, prediction, label, progress)
        if prediction.status == "failed":
            raise _failure(prediction, label)
        if prediction.status == "canceled":
            raise BackendFailed(
                f"The Replicate prediction {prediction.id} was canceled before it finished "
                "(from Replicate's dashboard or another client); nothing was made."
            )
        # 4. Download every output and make sure each one is an image.
        urls = _output_urls(transform_output(prediction.output, conns.api), label)
        _report(progress, 100, f"downloading {len(urls)} image(s)")
        images = await self._download_all(conns.files, urls, label, seed)
        return ImageResult(
            images=images,
            backend=self.id,
            model=model,
            prompt_sent=checked.prompt,
            parameters={
                "input": _redact(inputs),
                "prediction_id": prediction.id,
                "replicate_model": prediction.model,
                "version": prediction.version,
            },
            seed_honoured=seed is not None,
            metrics=dict(prediction.metrics or {}),
        )

    async def aclose(self) -> None:
        """Close this event loop's connections (tests and scripts; the app never needs to)."""
        conns, self._connections = self._connections, None
        if conns is not None and conns.loop is asyncio.get_running_loop():
            await conns.files.aclose()
            await conns.transport.aclose()

    # -- connections -------------------------------------------------------------------

    def _connect(self) -> _Connections:
        loop = asyncio.get_running_loop()
        conns = self._connections
        if conns is None or conns.loop is not loop:
            timeout = httpx.Timeout(self._timeout_s, connect=min(10.0, self._timeout_s))
            transport = httpx.AsyncHTTPTransport()
            api = replicate.Client(
                self._token,
                base_url=self._base_url,
                timeout=timeout,
                transport=transport,
                event_hooks={"response": [_remember_retry_after]},
            )
            # Outputs are fetched without the API token: it is no business of a file host.
            files = GuardedFetcher(self._fetch_policy)
            conns = self._connections = _Connections(loop, api, files, transport)
        return conns

    # -- create, with the project's retry policy ---------------------------------------

    async def _create(
        self,
        api: replicate.Client,
        ref: ModelRef,
        spec: ReplicateModel,
        inputs: dict[str, Any],
        label: str,
        progress: Progress | None,
    ) -> Prediction:
        """POST the prediction; on 429 and 5xx wait as Replicate asks, then try again."""
        attempts = self._max_retries + 1
        for attempt in range(1, attempts + 1):
            _stop_if_cancelled(progress)
            box: dict[str, str] = {}
            token = _retry_after_box.set(box)
            try:
                return await self._create_once(api, ref, spec, inputs)
            except ReplicateError as exc:
                status = exc.status or 0
                if status != 429 and status < 500:
                    raise _create_error(exc, ref, label) from exc
                asked = _parse_retry_after(box.get("retry-after"))
                if asked is not None and asked > self._max_retry_wait_s:
                    raise _busy(status, label, asked, attempt, self._max_retry_wait_s) from exc
                if attempt == attempts:
                    raise _busy(status, label, asked, attempt) from exc
                delay = asked if asked is not None else self._backoff(attempt)
                why = f"HTTP {status}"
            except httpx.ConnectError as exc:
                # Nothing reached Replicate, so trying again cannot start a second prediction.
                if attempt == attempts:
                    raise BackendUnavailable(
                        f"Could not reach Replicate ({type(exc).__name__}) after {attempt} "
                        "attempt(s). Check the connection or REPLICATE_BASE_URL."
                    ) from exc
                delay, why = self._backoff(attempt), "connection failed"
            except httpx.HTTPError as exc:
                # The POST may have arrived: retrying could start (and bill) a second one.
                raise BackendUnavailable(
                    f"Replicate did not answer the request to start {label} "
                    f"({type(exc).__name__}). Try again in a moment."
                ) from exc
            finally:
                _retry_after_box.reset(token)
            log.info("replicate_create_retry", attempt=attempt, delay_s=delay, reason=why)
            _report(progress, 0, f"Replicate is busy ({why}); retrying in {_seconds(delay)}")
            await _sleep(delay, progress)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _create_once(
        self, api: replicate.Client, ref: ModelRef, spec: ReplicateModel, inputs: dict[str, Any]
    ) -> Prediction:
        version = ref.version or spec.version
        if version:
            call = api.predictions.async_create(version=version, input=inputs)
        else:
            call = api.models.predictions.async_create(model=(ref.owner, ref.name), input=inputs)
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Stopped while the POST was in flight: it may already have started a
            # prediction. Hear the answer (briefly) so that one can be cancelled too.
            try:
                created = await asyncio.wait_for(task, CANCEL_TIMEOUT_S)
            except (Exception, asyncio.CancelledError):
                raise asyncio.CancelledError() from None
            await self._cancel_remote(api, created.id)
            raise

    def _backoff(self, attempt: int) -> float:
        return self._retry_backoff_s * 2 ** (attempt - 1)

    # -- poll ---------------------------------------------------------------------------

    async def _wait(
        self, api: replicate.Client, prediction: Prediction, label: str, progress: Progress | None
    ) -> Prediction:
        """Poll until the prediction ends; cancel it on Replicate if we stop waiting first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait_s
        delay = min(self._poll_interval_s, FIRST_POLL_S)
        current = prediction
        try:
            while current.status not in TERMINAL:
                _report_status(progress, current)
                if loop.time() > deadline:
                    raise BackendUnavailable(
                        f"{label} did not finish within {_seconds(self._max_wait_s)} "
                        f"(prediction {current.id} was still {current.status}); it was "
                        "cancelled. Try again later."
                    )
                await _sleep(delay, progress)
                delay = self._poll_interval_s
                current = await self._poll(api, current.id)
        except (Exception, asyncio.CancelledError):
            await self._cancel_remote(api, prediction.id)
            raise
        return current

    async def _poll(self, api: replicate.Client, prediction_id: str) -> Prediction:
        # The client itself retries GETs on 429/503/504; what is left here is final.
        try:
            return await api.predictions.async_get(prediction_id)
        except ReplicateError as exc:
            status = exc.status or 0
            if status in (401, 403):
                raise BackendNotConfigured(
                    f"Replicate rejected the API token ({_TOKEN_HINT})."
                ) from exc
            raise BackendUnavailable(
                f"Replicate stopped answering about prediction {prediction_id} (HTTP {status}"
                f"{': ' + _detail(exc) if _detail(exc) else ''}). Try again in a moment."
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                f"Lost contact with Replicate while waiting for prediction {prediction_id} "
                f"({type(exc).__name__}). Try again in a moment."
            ) from exc

    async def _cancel_remote(self, api: replicate.Client, prediction_id: str) -> None:
        """Best effort, bounded: a prediction nobody waits for still runs and bills."""
        task = asyncio.ensure_future(api.predictions.async_cancel(prediction_id))
        try:
            await asyncio.wait_for(asyncio.shield(task), CANCEL_TIMEOUT_S)
            log.info("replicate_prediction_cancelled", prediction=prediction_id)
        except (Exception, asyncio.CancelledError) as exc:
            # We are already unwinding with the error that matters; do not replace it.
            task.add_done_callback(_quiet)
            log.warning(
                "replicate_cancel_failed", prediction=prediction_id, error=type(exc).__name__
            )

    # -- outputs ------------------------------------------------------------------------

    async def _download_all(
        self, files: GuardedFetcher, urls: list[str], label: str, seed: int | None
    ) -> list[GeneratedImage]:
        async def one(url: str) -> GeneratedImage:
            data = await _fetch(files, url, label)
            mime, width, height = await asyncio.to_thread(_probe, data, url, label)
            return GeneratedImage(data=data, mime=mime, width=width, height=height, seed=seed)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(url)) for url in urls]
        except ExceptionGroup as failed:  # one error is enough for the user: the first
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]


# --------------------------------------------------------------------------- checks


def _check_model_limits(
    spec: ReplicateModel, request: ImageRequest, label: str, size_given: bool
) -> None:
    """Limits that `Capabilities` cannot express, refused before anything is spent."""
    if spec.guidance_range and request.guidance is not None:
        low, high = spec.guidance_range
        if not low <= request.guidance <= high:
            raise InvalidInput(
                f"{label} takes guidance from {low:g} to {high:g}; {request.guidance:g} was asked."
            )
    if request.seed is not None and request.seed > spec.max_seed:
        raise InvalidInput(
            f"{label} takes seeds from 0 to {spec.max_seed}; {request.seed} was asked."
        )
    if request.strength is not None and not request.images:
        raise InvalidInput(
            f"A strength only applies when {label} starts from an input image (img2img); "
            "give an image or leave strength out."
        )
    if spec.input_sets_size and request.images and size_given:
        first = request.images[0]
        if request.size != f"{first.width}x{first.height}":
            raise InvalidInput(
                f"{label} keeps the input image's shape ({first.width}x{first.height}) when it "
                f"starts from an image, so {request.size} cannot be honoured. Leave the size out."
            )


def _seed_to_send(spec: ReplicateModel, seed: int | None) -> int | None:
    """The user's seed, or a drawn one, so every image can be made again; None: no seed."""
    if spec.inputs.seed is None:
        return None
    return seed if seed is not None else secrets.randbelow(MAX_RANDOM_SEED + 1)


def _check_json(inputs: dict[str, Any]) -> None:
    try:
        json.dumps(inputs)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Extra inputs must be plain JSON values ({exc}).") from None


# --------------------------------------------------------------------------- input images


def _encode_images(spec: ReplicateModel, request: ImageRequest) -> tuple[str, str | None]:
    """Data URIs for the input image and mask (fine at our sizes: no upload round trip)."""
    first = request.images[0]
    image_uri = _data_uri(first.data, first.mime)
    mask_uri = None
    if request.mask is not None:
        mask_uri = _data_uri(
            _black_and_white_mask(request.mask.data, spec.mask_repaints), "image/png"
        )
    return image_uri, mask_uri


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _black_and_white_mask(data: bytes, repaint: str) -> bytes:
    """Our masks mark the area to repaint as transparent (as OpenAI's do); Replicate's
    inpainting models want a black-and-white picture instead."""
    with open_image(data) as image:
        if "A" not in image.getbands() and "transparency" not in image.info:
            raise InvalidInput(
                "A mask must be a PNG whose transparent pixels mark the area to repaint; "
                "this one has no transparency."
            )
        alpha = image.convert("RGBA").getchannel("A")
    repaint_value, keep_value = (255, 0) if repaint == "white" else (0, 255)
    mask = alpha.point(lambda a: repaint_value if a < 128 else keep_value)
    if mask.getextrema() == (keep_value, keep_value):
        raise InvalidInput("The mask has no transparent pixels, so there is nothing to repaint.")
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def _redact(value: Any) -> Any:
    """The input as sent, with data URIs shortened to their size for the record."""
    if isinstance(value, dict):
        return {key: _redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item) for item in value]
    if isinstance(value, str) and value.startswith("data:"):
        payload = value.partition(",")[2]
        return f"<image {math.ceil(len(payload) * 3 / 4 / 1024)} KB>"
    return value


# --------------------------------------------------------------------------- outputs


def _output_urls(output: Any, label: str) -> list[str]:
    """One output or a list: FileOutput or a plain string (a link or a data: URI).

    Which links are fetched is decided by `_fetch` (data: decoded here, http(s) through
    the guard, anything else refused there with the same message as a blocked host).
    """
    if output is None or output == [] or output == "":
        raise BackendFailed(f"{label} finished without any image. Try again.")
    items = list(output) if isinstance(output, list | tuple) else [output]
    urls = []
    for item in items:
        url = item.url if isinstance(item, FileOutput) else item
        if not isinstance(url, str):
            raise BackendFailed(
                f"{label} finished, but its output is not an image link ({type(item).__name__})."
            )
        urls.append(url)
    return urls


async def _fetch(files: GuardedFetcher, url: str, label: str) -> bytes:
    """A data: URI decoded in place; any other link through the guarded downloader."""
    if url.startswith("data:"):
        return _decode_data_uri(url, label)
    return await files.fetch(url, max_bytes=MAX_DOWNLOAD_BYTES)


def _decode_data_uri(uri: str, label: str) -> bytes:
    header, sep, payload = uri.partition(",")
    try:
        if not sep:
            raise ValueError("no comma")
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return urllib.parse.unquote_to_bytes(payload)
    except (ValueError, binascii.Error):
        raise BackendFailed(f"{label} returned a data: URI that cannot be decoded.") from None


def _probe(data: bytes, url: str, label: str) -> tuple[str, int, int]:
    """(mime, width, height), refusing anything that does not decode as an image.

    A downloaded file that is not an image gets the downloader's neutral message (what
    answered at a link is not the user's to learn); a data: URI says what is wrong.
    """
    try:
        with open_image(data) as image:
            return Image.MIME.get(image.format or "", "image/png"), image.width, image.height
    except InvalidInput as exc:
        if not url.startswith("data:"):
            raise refused(url, "not an image", error=str(exc)[:200], model=label) from None
        raise BackendFailed(f"{label} returned a file that is not a usable image: {exc}") from None


# --------------------------------------------------------------------------- errors


def _detail(exc: ReplicateError) -> str:
    return str(exc.detail or exc.title or "").strip()[:500]


def _create_error(exc: ReplicateError, ref: ModelRef, label: str) -> BackendError | InvalidInput:
    status = exc.status or 0
    if status in (401, 403):
        return BackendNotConfigured(f"Replicate rejected the API token ({_TOKEN_HINT}).")
    if status == 402:
        return QuotaExhausted(
            "Your Replicate account is out of credit (HTTP 402). Add credit at "
            "replicate.com/account/billing; retrying will not help."
        )
    if status == 404:
        version = f" version {ref.version}" if ref.version else ""
        return InvalidInput(
            f"Replicate has no model {ref.slug}{version} (or it is private to another "
            f"account). Check the name at https://replicate.com/{ref.slug}."
        )
    if status in (400, 422):
        return InvalidInput(f"Replicate refused the input for {label}: {_detail(exc)}")
    return BackendFailed(f"Replicate answered HTTP {status} to {label}: {_detail(exc)}")


def _busy(
    status: int, label: str, asked: float | None, attempts: int, cap: float | None = None
) -> BackendError:
    """Rate limited or down: say how long Replicate asked to wait and what we did."""
    if cap is not None:
        reason = f"asks to wait {_seconds(asked or 0)}, longer than Atelier waits ({_seconds(cap)})"
    else:
        asks = f"; it last asked to wait {_seconds(asked)}" if asked is not None else ""
        reason = f"still answered HTTP {status} after {attempts} attempt(s){asks}"
    if status == 429:
        return RateLimited(
            f"Replicate is rate-limiting new predictions for {label}: it {reason}. "
            "Nothing was started; try again later.",
            retry_after_s=asked,
        )
    return BackendUnavailable(
        f"Replicate is having server trouble (HTTP {status}) starting {label}: it {reason}. "
        "Nothing was started; try again in a moment."
    )


def _failure(prediction: Prediction, label: str) -> BackendError:
    error = str(prediction.error or "").strip()[:500] or "no reason given"
    if _REFUSAL.search(error):
        return ContentRefused(
            f"Replicate's safety filter refused this ({label}): {error} "
            "Rephrase the prompt and try again."
        )
    return BackendFailed(f"{label} failed on Replicate (prediction {prediction.id}): {error}")


def _parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.2g} s"


# --------------------------------------------------------------------------- progress


def _report(progress: Progress | None, done: int, note: str) -> None:
    if progress is not None:
        progress.report(done, 100, note)


def _report_status(progress: Progress | None, prediction: Prediction) -> None:
    if progress is None:
        return
    if prediction.status == "starting":
        _report(progress, 0, "starting (waiting for a Replicate worker)")
        return
    percent = _percent(prediction.logs or "")
    if percent is None:
        _report(progress, 0, "processing")
    else:
        _report(progress, percent, f"processing {percent}%")


def _percent(logs: str) -> int | None:
    """The last tqdm-style "NN%|" figure in the logs, if the model prints one."""
    found = _PERCENT.findall(logs)
    return min(100, int(found[-1])) if found else None


def _stop_if_cancelled(progress: Progress | None) -> None:
    if progress is not None and progress.cancelled:
        raise BackendFailed("Stopped at your request; nothing from Replicate was kept.")


async def _sleep(seconds: float, progress: Progress | None) -> None:
    """Sleep, waking early enough to notice a stop (`progress.cancel()`) from any thread."""
    if progress is None:
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while True:
        _stop_if_cancelled(progress)
        left = end - loop.time()
        if left <= 0:
            return
        await asyncio.sleep(min(left, 0.1))


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def create_backend(settings: Any) -> ReplicateImages | None:
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        return None
    return ReplicateImages(
        token.get_secret_value().strip(),
        settings.replicate_model,
        base_url=settings.replicate_base_url,
        poll_interval_s=settings.replicate_poll_interval_s,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        fetch_policy=FetchPolicy.from_setting(
            settings.fetch_allow_hosts, timeout_s=settings.request_timeout_s
        ),
    )
