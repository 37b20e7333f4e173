"""OpenAI's Images API, answered by Atelier: GET /v1/models, POST /v1/images/generations
and /v1/images/edits, for the `openai` SDKs, Open WebUI, LibreChat and anything else that
speaks it.

A request is the user's, through their API token (chat_app/api_auth.py), counted against
the token's rate and job slots (chat_app/api_limits.py). It runs through the chat's own
tools (generate_image, edit_image) with a ToolContext, so it is priced, reserved and
settled against the user's budgets, recorded with its lineage and cost, and shown in the
token's "API · <name>" conversation (memory/api_threads.py) and so in the gallery. What
the chat would ask to confirm is refused, naming the threshold (tools/api_port.py).

Answers are OpenAI's (sources in chat_app/openai_request.py; the shapes are the `openai`
package 3.57.0's `ImagesResponse`, `Model`, `ImageGen*Event` and `ImageEdit*Event`):
`{"created", "data": [{"b64_json"} | {"url"}], "size", "quality", "output_format",
"background", "usage"}`, plus an `atelier` object (the conversation, each image's id and
cost) that OpenAI's clients ignore. `response_format=url` answers a signed, absolute
/media link valid for as long as OpenAI's (60 minutes). `stream=true` answers server-sent
events `image_generation.partial_image` (or `image_edit.partial_image`) for each partial
image the backend streams (OpenAI's gpt-image-2 does; others send none) and then one
`…completed` per image; an error after the stream began is an `error` event, which the
SDK raises. The work does not depend on the client staying: one that leaves mid-stream
still finds its images in the conversation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from types import SimpleNamespace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from chat_app import openai_request
from chat_app.api_auth import ApiCaller, Caller
from chat_app.api_errors import ApiError, ApiRoute, envelope, from_core
from chat_app.api_limits import admit, job_slot
from chat_app.openai_request import (
    URL_LIFETIME_S,
    EditRequest,
    GenerationRequest,
    ImagesRequest,
    ModelOptions,
    Target,
)
from chat_app.runtime import Runtime, get_runtime
from chat_app.uploads import MAX_UPLOAD_BYTES, record_uploads
from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory import signed_links
from memory.api_threads import ApiConversation, ApiThreads
from memory.images import ImageRecord
from pipelines.progress import Preview
from tools import image_jobs
from tools.api_port import ApiPort
from tools.context import ToolArtifact, ToolContext, Turn

log = get_logger(__name__)

router = APIRouter(prefix="/v1", route_class=ApiRoute, tags=["OpenAI-compatible images"])

_NO_STORE = {"Cache-Control": "no-store"}
_MAX_FILES = 17  # OpenAI's edits take up to 16 images, plus the mask
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}
# Work still running for a client that left mid-stream: kept until it ends (a task that
# nothing refers to may be collected).
_running: set[asyncio.Task[Any]] = set()


async def _admitted(caller: Caller) -> ApiCaller:
    """The caller, once this request is within the token's rate (else 429)."""
    await admit(caller)
    return caller


Admitted = Annotated[ApiCaller, Depends(_admitted)]


# ------------------------------------------------------------------------ models


@router.get("/models")
async def list_models(caller: Admitted) -> JSONResponse:
    """The image models this install can use: `backend:model` ids, then plain names
    for those only one backend offers (what a client may send as `model`)."""
    backends = get_runtime().services.backends
    data = [
        _model(f"{backend.id}:{model}", backend.id)
        for backend in backends.available()
        for model in backends.live_models(backend)
    ]
    data += [
        _model(name, spec.split(":", 1)[0])
        for name, spec in openai_request.aliases(backends).items()
    ]
    return JSONResponse({"object": "list", "data": data}, headers=_NO_STORE)


def _model(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


# ------------------------------------------------------------------- generations


@router.post("/images/generations")
async def generations(body: GenerationRequest, request: Request, caller: Admitted) -> Response:
    body.refuse_unsupported()
    target = openai_request.resolve_model(get_runtime().services.backends, body.model)
    options = openai_request.check_for_model(body, target.capabilities(), target.label)
    # The tools import langchain (their declarations): loaded at the first request, not
    # at start-up (tests/test_startup_imports.py).
    from tools.generate_image import GenerateImageArgs, generate_image

    args = GenerateImageArgs(
        prompt=body.prompt,
        n=body.n,
        size=options.size,
        quality=options.quality,
        background=options.background,
        output_format=options.output_format,
        backend=target.spec,
    )

    async def run(ctx: ToolContext, inputs: list[ImageRecord]) -> ToolArtifact:
        return (await generate_image.run(ctx, args))[1]

    job = _Job(caller, body, target, options, "image_generation", run)
    return await _answer(request, job)


# ------------------------------------------------------------------------- edits


def _edit_form_schema() -> dict[str, Any]:
    """The multipart body for the OpenAPI document: the text fields and the files."""
    schema = EditRequest.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    schema["properties"] |= {
        "image": binary,
        "image[]": {"type": "array", "items": binary, "maxItems": _MAX_FILES - 1},
        "mask": binary,
    }
    schema["required"] = ["prompt"]  # and `image` or `image[]`
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


@router.post("/images/edits", openapi_extra=_edit_form_schema())
async def edits(request: Request, caller: Admitted) -> Response:
    form = await _form(request)
    body = _validated(
        EditRequest, {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    )
    body.refuse_unsupported()
    target = openai_request.resolve_model(get_runtime().services.backends, body.model)
    caps = target.capabilities(editing=True)
    options = openai_request.check_for_model(body, caps, target.label)
    images = [_file(part, "image") for part in form.getlist("image") + form.getlist("image[]")]
    if not images:
        raise ApiError(
            400,
            "Missing required parameter: 'image'. Send the image to edit as `image` "
            "(or several as `image[]`).",
            param="image",
            code="missing_required_parameter",
        )
    if len(images) > max(1, caps.max_input_images):
        raise ApiError(
            400,
            f"{target.label} takes at most {caps.max_input_images} input image(s); "
            f"{len(images)} were sent.",
            param="image",
            code="invalid_value",
        )
    mask_part = form.get("mask")
    mask = _file(mask_part, "mask") if mask_part is not None else None
    uploads = [await _checked(*image) for image in images]
    if mask is not None:
        if not caps.mask:
            raise ApiError(
                400, f"{target.label} takes no mask.", param="mask", code="invalid_value"
            )
        checked_mask = await _checked(*mask)
        _check_mask(checked_mask, uploads[0])
        uploads.append(checked_mask)

    async def run(ctx: ToolContext, inputs: list[ImageRecord]) -> ToolArtifact:
        from tools import edit_image  # imports langchain: at the first request (as above)

        sources = inputs[: len(images)]
        args = edit_image.EditImageArgs(
            instruction=body.prompt,
            image_id=sources[0].id,
            mask_id=inputs[-1].id if mask is not None else None,
            extra_image_ids=[record.id for record in sources[1:]],
            backend=target.spec,
        )
        asked = {
            "n": body.n,
            "size": options.size,
            "quality": options.quality,
            "background": options.background,
            "output_format": options.output_format,
        }
        return (await edit_image.edit(ctx, args, **asked))[1]

    job = _Job(caller, body, target, options, "image_edit", run, uploads)
    return await _answer(request, job)


async def _form(request: Request) -> Any:
    """The multipart form (ApiRoute has already bounded the body: 413 past the limit)."""
    try:
        return await request.form(max_files=_MAX_FILES, max_fields=64)
    except ApiError:
        raise
    except Exception as exc:  # starlette's MultiPartException: a form it cannot read
        raise ApiError(
            400,
            "The request must be multipart/form-data with the fields of an image edit "
            f"({str(exc)[:200]}).",
        ) from None


def _validated(model: type[EditRequest], fields: dict[str, Any]) -> EditRequest:
    """The form's text fields as the model, or the same 400 a JSON body would get."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _file(part: Any, param: str) -> tuple[str, UploadFile]:
    if not isinstance(part, UploadFile):
        raise ApiError(
            400,
            f"Invalid file '{param}': expected a file upload.",
            param=param,
            code="invalid_value",
        )
    return param, part


@dataclass(frozen=True)
class _Upload:
    name: str
    data: bytes
    mime: str
    width: int
    height: int


async def _checked(param: str, part: UploadFile) -> _Upload:
    """An uploaded file that is a readable PNG, JPEG or WebP within the upload limit."""
    data = await part.read()
    name = part.filename or param
    if len(data) > MAX_UPLOAD_BYTES:
        raise ApiError(
            400,
            f"Invalid file '{param}': {len(data) / 2**20:.1f} MB; the limit is "
            f"{MAX_UPLOAD_BYTES // 2**20} MB.",
            param=param,
            code="invalid_value",
        )
    try:
        mime, width, height = await image_jobs.check_upload(data)
    except InvalidInput as exc:
        raise ApiError(
            400, f"Invalid file '{param}': {exc.message}", param=param, code="invalid_image_format"
        ) from None
    return _Upload(name[:255], data, mime, width, height)


def _check_mask(mask: _Upload, image: _Upload) -> None:
    """OpenAI's rule: the mask is a PNG of the image's size (alpha 0 = repaint)."""
    if mask.mime != "image/png":
        raise ApiError(400, "Invalid mask image: the mask must be a PNG file.", param="mask")
    if (mask.width, mask.height) != (image.width, image.height):
        raise ApiError(
            400,
            f"Invalid mask image: mask size {mask.width}x{mask.height} does not match image "
            f"size {image.width}x{image.height}.",
            param="mask",
            code="invalid_value",
        )


# ---------------------------------------------------------------- running a job

Run = Callable[[ToolContext, list[ImageRecord]], Awaitable[ToolArtifact]]
PreviewSink = Callable[[Preview], Awaitable[None]]


@dataclass
class _Job:
    """One images request, checked and ready to run."""

    caller: ApiCaller
    body: ImagesRequest
    target: Target
    options: ModelOptions
    events: str  # the stream's event prefix: image_generation | image_edit
    run: Run
    uploads: list[_Upload] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return "edits" if self.events == "image_edit" else "generations"


@dataclass
class _Done:
    conversation: ApiConversation
    artifact: ToolArtifact


async def _perform(runtime: Runtime, job: _Job, on_preview: PreviewSink | None) -> _Done:
    """Record the request in the token's conversation, run it through the tool, record
    the answer (or why there is none). Holds one of the token's job slots throughout."""
    caller = job.caller
    async with job_slot(caller):
        threads = ApiThreads(runtime.engine)
        where = await threads.open(caller.user_id, caller.token_id, caller.token_name)
        services = runtime.services
        port = ApiPort(
            services.ledger,
            user_id=caller.user_id,
            thread_id=where.thread_id,
            operator_limits=services.operator_limits,
            on_preview=on_preview,
            max_previews=(job.body.partial_images or 0) if job.body.n == 1 else 0,
        )

        def context(step_id: str) -> ToolContext:
            turn = Turn(user_id=caller.user_id, thread_id=where.thread_id, message_id=step_id)
            return ToolContext(services=services, turn=turn, port=port)

        inputs = await record_uploads(
            context(where.request_step_id),
            [SimpleNamespace(name=u.name, content=u.data, mime=u.mime) for u in job.uploads],
            job.body.prompt,
        )
        await threads.add_request(where, caller.user_name, _request_text(job), inputs)
        try:
            artifact = await job.run(context(where.reply_step_id), inputs)
        except BaseException as exc:
            reason = exc.message if isinstance(exc, AtelierError | ApiError) else "it failed"
            await asyncio.shield(threads.add_reply(where, f"Not made: {reason}", is_error=True))
            raise
        images = [record for record, _ in artifact.images]
        await threads.add_reply(where, _reply_text(job, artifact), images)
        log.info(
            "api_images_made",
            endpoint=job.endpoint,
            token=caller.token_id,
            images=len(images),
            backend=job.target.backend.id,
        )
        return _Done(where, artifact)


def _request_text(job: _Job) -> str:
    body, options = job.body, job.options
    asked = [f"model {job.target.spec}", f"n {body.n}"]
    asked += [
        f"{name.replace('_', ' ')} {value}"
        for name, value in (
            ("size", options.size),
            ("quality", options.quality),
            ("background", options.background),
            ("output_format", options.output_format),
        )
        if value
    ]
    return f"{body.prompt}\n\n*POST /v1/images/{job.endpoint} · {' · '.join(asked)}*"


def _reply_text(job: _Job, artifact: ToolArtifact) -> str:
    verb = "Edited into" if job.events == "image_edit" else "Generated"
    text = image_jobs.summary(verb, artifact, job.target.label)
    cost, source = _cost(artifact)
    if cost is not None:
        text += f"\nCost: ${cost:.4f} ({source})."
    return text


def _cost(artifact: ToolArtifact) -> tuple[Decimal | None, str | None]:
    costs = [record.cost_usd for record, _ in artifact.images]
    if not costs or any(cost is None for cost in costs):
        return None, None
    first = artifact.images[0][0].parameters.get("cost") or {}
    return sum(costs, Decimal(0)), first.get("source")


# ------------------------------------------------------------------- answering


async def _answer(request: Request, job: _Job) -> Response:
    runtime = get_runtime()
    if job.body.stream:
        return await _stream(request, runtime, job)
    done = await _perform(runtime, job, None)
    return JSONResponse(_body(request, runtime, job, done), headers=_NO_STORE)


def _body(request: Request, runtime: Runtime, job: _Job, done: _Done) -> dict[str, Any]:
    records = done.artifact.images
    first = records[0][0]
    data = []
    for record, stored in records:
        if job.body.wants_url:
            data.append({"url": _url(request, runtime, record)})
        else:
            data.append({"b64_json": base64.b64encode(stored).decode("ascii")})
    body: dict[str, Any] = {"created": int(time.time()), "data": data, **_settings(first)}
    usage = _usage(done.artifact)
    if usage is not None:
        body["usage"] = usage
    cost, source = _cost(done.artifact)
    body["atelier"] = {
        "conversation_id": done.conversation.thread_id,
        "images": [
            {
                "id": record.id,
                "width": record.width,
                "height": record.height,
                "cost_usd": None if record.cost_usd is None else str(record.cost_usd),
            }
            for record, _ in records
        ],
        "cost_usd": None if cost is None else str(cost),
        "cost_source": source,
        "notes": done.artifact.notes,
    }
    return body


def _url(request: Request, runtime: Runtime, record: ImageRecord) -> str:
    """An absolute link anyone holding it can fetch until it expires (as OpenAI's)."""
    query = signed_links.sign(runtime.auth_secret, record.media_key, ttl_s=URL_LIFETIME_S)
    return f"{str(request.base_url).rstrip('/')}/media/{record.media_key}?{query}"


def _settings(record: ImageRecord) -> dict[str, Any]:
    """The response's `size`, `quality`, `output_format`, `background`, where known."""
    asked = record.parameters.get("request") or {}
    out: dict[str, Any] = {"size": f"{record.width}x{record.height}"}
    if record.mime in _FORMATS:
        out["output_format"] = _FORMATS[record.mime]
    if asked.get("quality") in ("low", "medium", "high"):
        out["quality"] = asked["quality"]
    if asked.get("background") in ("transparent", "opaque"):
        out["background"] = asked["background"]
    return out


def _usage(artifact: ToolArtifact) -> dict[str, Any] | None:
    """The provider's token usage, when one provider request made every image."""
    usages = [record.parameters.get("usage") for record, _ in artifact.images]
    if not usages or not isinstance(usages[0], dict):
        return None
    if any(json.dumps(u, sort_keys=True) != json.dumps(usages[0], sort_keys=True) for u in usages):
        return None
    return usages[0]


# ------------------------------------------------------------------- streaming


async def _stream(request: Request, runtime: Runtime, job: _Job) -> Response:
    """Server-sent events; an error before the first event is a plain error answer."""
    previews: asyncio.Queue[Preview] = asyncio.Queue()
    first = asyncio.Event()

    async def sink(preview: Preview) -> None:
        previews.put_nowait(preview)
        first.set()

    work = asyncio.create_task(_perform(runtime, job, sink), name="api-images")
    _running.add(work)
    work.add_done_callback(_finished)
    started = asyncio.create_task(first.wait())
    try:
        await asyncio.wait({work, started}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        started.cancel()
    if work.done() and previews.empty() and work.exception() is not None:
        raise work.exception()  # type: ignore[misc]
    return StreamingResponse(
        _events(request, runtime, job, work, previews),
        media_type="text/event-stream",
        headers={**_NO_STORE, "X-Accel-Buffering": "no"},
    )


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.info("api_stream_job_failed", error=type(task.exception()).__name__)


async def _events(
    request: Request,
    runtime: Runtime,
    job: _Job,
    work: asyncio.Task[_Done],
    previews: asyncio.Queue[Preview],
) -> AsyncIterator[bytes]:
    index = 0
    while True:
        waiting = asyncio.ensure_future(previews.get())
        await asyncio.wait({waiting, work}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            yield _partial(job, waiting.result(), index)
            index += 1
            continue
        waiting.cancel()
        break
    while not previews.empty():
        yield _partial(job, previews.get_nowait(), index)
        index += 1
    if work.cancelled():
        return
    failure = work.exception()
    if failure is not None:
        yield _event("error", {"type": "error", **envelope(_api_error(failure))})
        return
    done = work.result()
    usage = _usage(done.artifact) or _NO_USAGE
    for record, stored in done.artifact.images:
        completed = {
            "type": f"{job.events}.completed",
            "b64_json": base64.b64encode(stored).decode("ascii"),
            "created_at": int(time.time()),
            "background": (record.parameters.get("request") or {}).get("background") or "auto",
            "output_format": _FORMATS.get(record.mime, "png"),
            "quality": (record.parameters.get("request") or {}).get("quality") or "auto",
            "size": f"{record.width}x{record.height}",
            "usage": usage,
        }
        yield _event(completed["type"], completed)


_NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


def _partial(job: _Job, preview: Preview, index: int) -> bytes:
    text = getattr(preview, "text", None)  # a forwarded preview is base64 already
    b64 = text if isinstance(text, str) else base64.b64encode(preview.data).decode("ascii")
    event = {
        "type": f"{job.events}.partial_image",
        "b64_json": b64,
        "created_at": int(time.time()),
        "background": job.options.background or "auto",
        "output_format": _FORMATS.get(preview.mime, "png"),
        "partial_image_index": index,
        "quality": job.options.quality or "auto",
        "size": job.options.size or "auto",
    }
    return _event(event["type"], event)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def _api_error(exc: BaseException) -> ApiError:
    """What a failure after the stream began is sent as, as ApiRoute would answer it."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, AtelierError):
        answer = from_core(exc)
        if answer is not None:
            return answer
        log.error("api_stream_failed", error=type(exc).__name__)
        return ApiError(500, exc.message, type="server_error")  # written to be shown
    log.error("api_stream_crashed", error=type(exc).__name__)
    return ApiError(500, "The server had an error while drawing the image.", type="server_error")
