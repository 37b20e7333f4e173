"""OpenAI's Images API through the official client: generations and edits.

The client's own retry policy handles timeouts, connection errors, 429 and 5xx with
`retry-after`; what is left when it gives up is translated here into the project's
errors, each with a message that tells the user what happened and what to do. Model
capabilities are data (`MODEL_CAPABILITIES`), so a new gpt-image model is one row.

An answer that is not what the Images API promises (a body that is not JSON, JSON without
a `data` list, an entry without image data, base64 that does not decode, bytes that are
not an image) is read in one place, `_images_from`, and becomes `BackendFailed` naming
OpenAI and what was wrong. The client does not check answers itself: it raises
`JSONDecodeError` for a JSON body that does not parse, returns the text of a body that
is not JSON, and builds its response models from whatever JSON came without validating.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pydantic
from PIL import Image

from core.errors import (
    BackendError,
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    ModelUnavailable,
    QuotaExhausted,
    RateLimited,
)
from pipelines import previews, provider_limits
from pipelines.backend_settings import BackendSettings
from pipelines.elapsed_bar import Durations, ElapsedBar, ticking
from pipelines.images.base import (
    Capabilities,
    GeneratedImage,
    ImageRequest,
    ImageResult,
    InputImage,
    SizeRange,
    check_request,
)
from pipelines.progress import Progress

if TYPE_CHECKING:
    import openai

_FIXED_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
_COMMON = dict(
    qualities=("auto", "low", "medium", "high"),
    max_n=10,
    seed=False,
    edit="instruction",
    max_input_images=16,
    mask=True,
    output_formats=("png", "jpeg", "webp"),
    max_prompt_chars=32000,
)
# gpt-image-1.5 and -1-mini (both shut down on 2026-12-01; see models.toml).
GPT_IMAGE_1 = Capabilities(
    sizes=_FIXED_SIZES, backgrounds=("auto", "transparent", "opaque"), **_COMMON
)
# gpt-image-2's request shape (read 2026-11-30; OpenAI's image generation guide as quoted
# by the API reference and Replicate's openai/gpt-image-2 schema): any WxH with both edges
# multiples of 16, the longest at most 3840, at most 3:1, and 655,360 to 8,294,400 pixels
# (above 2560x1440 is "experimental"); quality low/medium/high/auto; n 1-10; up to 16
# input images with an optional mask on edits. It does NOT take transparent backgrounds
# (openai's generated SDK docs: "gpt-image-2 and gpt-image-2-2026-04-21 do not support
# transparent backgrounds"; OpenAI answers 400), so Atelier refuses that before sending.
_GPT_IMAGE_2_SIZES = SizeRange(
    min_side=480,
    max_side=3840,
    multiple=16,
    min_pixels=655_360,
    max_pixels=8_294_400,
    max_aspect=3.0,
)
_GPT_IMAGE_2_PRESETS = (
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "2048x2048",
    "2048x1152",
    "3840x2160",
    "2160x3840",
    "auto",
)
GPT_IMAGE_2 = Capabilities(
    sizes=_GPT_IMAGE_2_PRESETS,
    size_range=_GPT_IMAGE_2_SIZES,
    backgrounds=("auto", "opaque"),
    **_COMMON,
)
# The later gpt-image-2.x snapshots (2.5, 2.6 flare/sunburst) take the same sizes; the
# transparency restriction is documented for gpt-image-2 only, so they may ask for it
# (OpenAI's own refusal, if any, is shown as it comes).
GPT_IMAGE_2X = Capabilities(
    sizes=_GPT_IMAGE_2_PRESETS,
    size_range=_GPT_IMAGE_2_SIZES,
    backgrounds=("auto", "transparent", "opaque"),
    **_COMMON,
)
MODEL_CAPABILITIES: dict[str, Capabilities] = {
    "gpt-image-1.5": GPT_IMAGE_1,
    "gpt-image-1-mini": GPT_IMAGE_1,
    "chatgpt-image-latest": GPT_IMAGE_1,
    "gpt-image-2": GPT_IMAGE_2,
    "gpt-image-2-2026-04-21": GPT_IMAGE_2,
}


# Partial images to ask for while streaming, per model; a model not listed does not stream.
# Sources (read 2026-11-30):
# - the openai package 3.57.0, `images.generate` / `images.edit` (resources/images.py):
#   `stream` "is only supported for the GPT image models"; `partial_images` "Value must
#   be between 0 and 3. When set to 0, the response will be a single image sent in one
#   streaming event. Note that the final image may be sent before the full number of
#   partial images are generated if the full image is generated more quickly"; GIF and
#   SVG output do not stream (Atelier asks for neither).
# - its event types (types/image_gen_*_event.py, image_edit_*_event.py) and OpenAI's API
#   reference, "Image Streaming" (developers.openai.com/api/reference/resources/images/
#   edit-streaming-events): server-sent events `image_generation.partial_image` /
#   `image_edit.partial_image` (b64_json, partial_image_index from 0) and then
#   `image_generation.completed` / `image_edit.completed` (b64_json, usage).
# - OpenAI's image generation guide, "Streaming" (developers.openai.com/api/docs/guides/
#   image-generation): the Image API example streams gpt-image-2 with partial_images=2.
# Not streamed: gpt-image-1.5's model page says "Streaming: Not supported" (as quoted on
# 2026-03-23 by aifreeapi.com, third party), and nothing says otherwise for -1-mini or
# chatgpt-image-latest; their bar moves with time only. The events name no image, so
# only a request for one image streams. Partial images may add output tokens (OpenAI's
# forum says about 100 each, unverified); the settled cost reads the usage OpenAI
# reports, so the ledger stays true.
PARTIAL_IMAGES: dict[str, int] = {
    "gpt-image-1.5": 0,
    "gpt-image-1-mini": 0,
    "chatgpt-image-latest": 0,
    "gpt-image-2": 2,
    "gpt-image-2-2026-04-21": 2,
}
_PARTIAL_EVENTS = ("image_generation.partial_image", "image_edit.partial_image")
_COMPLETED_EVENTS = ("image_generation.completed", "image_edit.completed")


def partial_images_for(model: str) -> int:
    """As `capabilities_for`: any other gpt-image-2 name is a 2.x snapshot, which streams."""
    if model in PARTIAL_IMAGES:
        return PARTIAL_IMAGES[model]
    return 2 if model.startswith("gpt-image-2") else 0


def capabilities_for(model: str) -> Capabilities:
    """Exact names first; any other gpt-image-2 name is a later 2.x snapshot."""
    if model in MODEL_CAPABILITIES:
        return MODEL_CAPABILITIES[model]
    if model.startswith("gpt-image-2"):
        return GPT_IMAGE_2X
    # Unknown names (a newer model) get the gpt-image-2 set; OpenAI itself refuses a bad id.
    return GPT_IMAGE_2X


# What OpenAI answers for a model that is gone or was never there.
_GONE_CODES = ("model_not_found", "model_deprecated", "model_retired")


def _error_code(exc: openai.APIError) -> str | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    code = getattr(exc, "code", None) or (error.get("code") if isinstance(error, dict) else None)
    return str(code) if code else None


def _refused(exc: BaseException) -> bool:
    """A connection that failed at once (refused, no route, no such host): the aiohttp
    transport reports it as a connect timeout, though nothing was waited for."""
    import aiohttp

    seen: BaseException | None = exc
    for _ in range(8):  # the chain is short: SDK error, httpx error, aiohttp error
        if seen is None:
            return False
        if isinstance(seen, aiohttp.ClientConnectorError) and not isinstance(
            seen, aiohttp.ServerTimeoutError
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def translate_error(
    exc: openai.OpenAIError, model: str | None = None
) -> BackendError | InvalidInput:
    """Map the client's exceptions to errors with a user-facing message."""
    import openai  # on first use, as everywhere here: it costs start-up time

    if isinstance(exc, openai.APITimeoutError) and not _refused(exc):
        return BackendUnavailable("OpenAI did not answer in time. Try again in a moment.")
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailable(
            "Could not reach OpenAI (network error). Check the connection or OPENAI_BASE_URL."
        )
    if isinstance(exc, openai.APIResponseValidationError):
        return unusable_answer("an answer that does not match the Images API")
    if not isinstance(exc, openai.APIError):
        return BackendFailed(f"OpenAI image request failed: {type(exc).__name__}.")
    code = _error_code(exc)
    detail = _message(exc)
    if code == "moderation_blocked" or code == "content_policy_violation":
        return ContentRefused(
            "OpenAI's safety system refused this prompt (moderation_blocked). "
            "Rephrase it and try again; nothing was charged for the refused image."
        )
    if not isinstance(exc, openai.APIStatusError):  # an error event in a streamed answer
        reason = detail.rstrip(". ")
        return BackendFailed(f"OpenAI stopped while drawing: {reason}. Nothing was kept; retry.")
    if code == "insufficient_quota":
        return QuotaExhausted(
            "Your OpenAI account has run out of credit (insufficient_quota). "
            "Add credit or raise the limit at OpenAI's billing page; retrying will not help."
        )
    if isinstance(exc, openai.RateLimitError):
        retry_after = exc.response.headers.get("retry-after") if exc.response else None
        wait = f" OpenAI asks to wait {retry_after} s." if retry_after else ""
        return RateLimited(
            f"OpenAI is rate-limiting image requests right now.{wait} Try again shortly.",
            retry_after_s=float(retry_after) if retry_after and _is_number(retry_after) else None,
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return BackendNotConfigured(
            "OpenAI rejected the API key (check OPENAI_API_KEY; it may be wrong or revoked)."
        )
    if isinstance(exc, openai.NotFoundError) or code in _GONE_CODES:
        return ModelUnavailable(
            f"OpenAI does not offer the image model {model or '(unnamed)'} (any more): {detail}",
            backend="openai",
            model=model or "",
        )
    if isinstance(exc, openai.BadRequestError):
        return InvalidInput(f"OpenAI refused the request: {detail}")
    if exc.status_code >= 500:
        return BackendFailed("OpenAI had a server error and gave up after retries. Try again.")
    return BackendFailed(f"OpenAI answered {exc.status_code}: {detail}")


def unusable_answer(what: str) -> BackendFailed:
    """OpenAI answered, but not with what its Images API promises."""
    return BackendFailed(
        f"OpenAI answered the image request with {what}, not the images its API promises, "
        "so nothing was kept. Try again; if it keeps happening, OpenAI (or the server set "
        "as OPENAI_BASE_URL) is misbehaving."
    )


def _message(exc: openai.APIError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or exc.message)[:300]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class OpenAIImages:
    id = "openai"
    label = "OpenAI"

    def __init__(
        self,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self.default_model = model
        self._options: dict[str, Any] = dict(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
        )
        # Made on first use, like its import, and per event loop: its HTTP session
        # belongs to the loop that opened it.
        self._openai: openai.AsyncOpenAI | None = None
        self._openai_loop: asyncio.AbstractEventLoop | None = None
        self._durations = Durations()

    @property
    def _client(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        if self._openai is None or self._openai_loop is not loop:
            import openai

            from pipelines.images.openai_stream import client_class

            # Every request, the client's own retries included, waits out a 429 pause that
            # any request to OpenAI met (pipelines/provider_limits.py). Its streams are
            # split into lines at memory speed (pipelines/images/openai_stream.py). The
            # aiohttp transport takes a pooled connection without probing every idle one
            # (httpx's default pool did, at each request's start and end: at 50 sessions,
            # 50-odd connections; chat_app/chat_model.py says the same of the chat client).
            self._openai = client_class()(
                **self._options,
                http_client=openai.DefaultAioHttpClient(
                    event_hooks=provider_limits.http_hooks("openai")
                ),
            )
            self._openai_loop = loop
        return self._openai

    def capabilities(self, model: str | None = None) -> Capabilities:
        return capabilities_for(model or self.default_model)

    def suggested_models(self) -> list[str]:
        # Which other models are current is the model catalogue's to say (models.toml).
        return [self.default_model]

    async def generate(
        self, request: ImageRequest, progress: Progress | None = None
    ) -> ImageResult:
        request = check_request(self, request)
        if request.background == "transparent" and request.output_format == "jpeg":
            raise InvalidInput("A transparent background needs output format png or webp.")
        params: dict[str, Any] = {
            "size": request.size,
            "quality": request.quality,
            "n": request.n,
            "output_format": request.output_format,
        }
        if request.background:
            params["background"] = request.background
        assert request.model is not None  # check_request fills it
        watched = progress is not None and progress.watched
        frames = partial_images_for(request.model) if watched and request.n == 1 else 0
        kind = (request.model, request.quality, request.size, bool(request.images), request.n)
        typical_s = self._durations.typical(kind)
        bar = ElapsedBar(progress, "OpenAI is drawing", frames, typical_s) if progress else None
        import openai  # on first use, with the client

        started = time.monotonic()
        try:
            async with ticking(bar):
                if frames:
                    images, usage = await self._streamed(request, params, frames, bar)
                else:
                    images, usage = _images_from(await self._send(request, params))
        except openai.OpenAIError as exc:
            raise translate_error(exc, request.model) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            # The client parses a JSON content type (and each streamed event) without
            # checking; nothing else in the call reads the answer's body.
            raise unusable_answer("a body that is not valid JSON") from exc
        self._durations.add(kind, time.monotonic() - started)
        if frames:
            params["partial_images"] = frames
        if request.images:
            params["input_images"] = len(request.images)
            params["mask"] = request.mask is not None
        return ImageResult(
            images=images,
            backend=self.id,
            model=request.model,
            prompt_sent=request.prompt,
            parameters=params,
            usage=usage,
            seed_honoured=False,
        )

    def _send(self, request: ImageRequest, params: dict[str, Any], **more: Any) -> Awaitable[Any]:
        """The Images API call: an edit when there are input images, else a generation."""
        if request.images:
            return self._client.images.edit(
                model=request.model,
                prompt=request.prompt,
                image=_files(request.images),
                **({"mask": _file(request.mask, "mask")} if request.mask else {}),
                **params,
                **more,
            )
        return self._client.images.generate(
            model=request.model, prompt=request.prompt, **params, **more
        )

    async def _streamed(
        self, request: ImageRequest, params: dict[str, Any], frames: int, bar: ElapsedBar | None
    ) -> tuple[list[GeneratedImage], dict[str, Any] | None]:
        """Partial images as previews, then the image (the events are in PARTIAL_IMAGES'
        sources). A server that ignored `stream` and answered as for a plain request
        (an OpenAI-compatible one) is read as such."""
        stream = await self._send(request, params, stream=True, partial_images=frames)
        async with stream:
            content_type = stream.response.headers.get("content-type", "")
            if not content_type.startswith("text/event-stream"):
                return _images_from_body(await stream.response.aread(), content_type)
            images: list[GeneratedImage] = []
            usage: Any = None
            async for event in stream:
                kind = getattr(event, "type", None)
                b64 = getattr(event, "b64_json", None)
                if kind in _PARTIAL_EVENTS and bar is not None and isinstance(b64, str):
                    # Passed on as it came when the browser can show it (a header read
                    # here); else shrunk, which decodes it, in a worker thread.
                    preview = previews.forwarded(b64)
                    if preview is None:
                        preview = await asyncio.to_thread(previews.from_base64, b64)
                    bar.stage(getattr(event, "partial_image_index", 0), preview)
                elif kind in _COMPLETED_EVENTS:
                    if not isinstance(b64, str) or not b64:
                        raise unusable_answer("an event without image data (no b64_json)")
                    images.append(_decode(b64))
                    usage = getattr(event, "usage", None)
        if not images:
            raise unusable_answer("an event stream that ended before the image came")
        if isinstance(usage, pydantic.BaseModel):
            usage = usage.model_dump(warnings=False)
        return images, usage if isinstance(usage, dict) else None


_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def _file(image: InputImage, stem: str) -> tuple[str, bytes, str]:
    """A multipart file part: the API checks the filename's extension and the type."""
    return (f"{stem}.{_EXTENSIONS.get(image.mime, 'png')}", image.data, image.mime)


def _files(images: tuple[InputImage, ...]) -> Any:
    # One image goes as `image`, several as repeated `image[]` parts (the client decides
    # by whether it gets a list).
    if len(images) == 1:
        return _file(images[0], "image")
    return [_file(image, f"image{i}") for i, image in enumerate(images)]


def _images_from(response: Any) -> tuple[list[GeneratedImage], dict[str, Any] | None]:
    """The images and usage of an Images API answer, or `unusable_answer` saying what
    was wrong with it (the one place an answer is read)."""
    from openai.types import ImagesResponse

    if isinstance(response, str):  # the client hands back a non-JSON body as text
        raise unusable_answer("a body that is not JSON")
    if not isinstance(response, ImagesResponse):
        raise unusable_answer("JSON that is not an object")
    if not isinstance(response.data, list):
        raise unusable_answer("JSON without a `data` list")
    if not response.data:
        raise BackendFailed("OpenAI answered without any image. Try again.")
    images = []
    for item in response.data:
        b64 = getattr(item, "b64_json", None)
        if isinstance(b64, str) and b64:
            images.append(_decode(b64))
        elif isinstance(getattr(item, "url", None), str):
            raise unusable_answer("a link instead of the image data (b64_json) it was asked for")
        else:
            raise unusable_answer("an entry without image data (no b64_json)")
    usage: Any = response.usage
    if isinstance(usage, pydantic.BaseModel):
        usage = usage.model_dump(warnings=False)
    return images, usage if isinstance(usage, dict) else None


def _images_from_body(
    body: bytes, content_type: str
) -> tuple[list[GeneratedImage], dict[str, Any] | None]:
    """A whole answer to a streamed request, read as the client reads a plain one."""
    from openai.types import ImagesResponse

    if "json" not in content_type:
        raise unusable_answer("a body that is not JSON")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise unusable_answer("a body that is not valid JSON") from exc
    if not isinstance(data, dict):
        raise unusable_answer("JSON that is not an object")
    return _images_from(ImagesResponse.construct(**data))


def _decode(b64: str) -> GeneratedImage:
    try:
        data = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise unusable_answer("image data that is not valid base64") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except (ValueError, OSError) as exc:
        raise unusable_answer("data that is not a readable image") from exc
    return GeneratedImage(data=data, mime=mime, width=width, height=height)


def create_backend(settings: BackendSettings) -> OpenAIImages | None:
    if settings.openai_api_key is None:
        return None
    return OpenAIImages(
        api_key=settings.openai_api_key.get_secret_value(),
        model=settings.image_model,
        base_url=settings.openai_base_url,
        timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
    )
