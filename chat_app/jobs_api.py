"""The jobs API: /api/v1/jobs for work that takes a while (images, batches, videos, trainings).

`POST /api/v1/jobs` answers 202 at once with the job (`queued`); the work runs in this
process (tools/api_jobs_runner.py) through the chat's own tools, so it is priced,
reserved against the user's budgets, settled and recorded in the token's "API ·" conver-
sation (memory/api_threads.py) like anything made in the chat. `GET /api/v1/jobs/{id}`
reads its state, `GET .../events` streams it as server-sent events, `POST .../cancel`
stops it. A webhook, when given, is POSTed signed when the job ends (chat_app/webhooks.py).

Every route takes the bearer token (chat_app/api_auth.py), counts against its rate
(api_limits.admit), and sees only the token's user's jobs: another user's job id is
answered 404 like one that does not exist. A job holds one of its token's concurrent-job
slots (api_limits.acquire_slot) until it ends.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from chat_app import api_limits, webhooks
from chat_app.api_auth import Caller
from chat_app.api_errors import ApiError, ApiRoute, from_core
from chat_app.jobs_request import JobCreate
from chat_app.runtime import Runtime, get_runtime
from core.errors import AtelierError
from core.logging_setup import get_logger
from memory.api_jobs import FINAL, ApiJobRecord, ApiJobStore
from memory.api_threads import ApiConversation, ApiThreads
from memory.api_tokens import ApiCaller
from memory.images import ImageRecord
from memory.signed_links import sign
from tools.api_jobs_runner import ApiJobRunner, JobConversation
from tools.context import ToolArtifact

log = get_logger(__name__)

router = APIRouter(prefix="/api/v1", route_class=ApiRoute, tags=["jobs"])

_NO_STORE = {"Cache-Control": "no-store"}
SSE_POLL_S = 1.0  # a job another process runs is read this often
SSE_KEEPALIVE_S = 15.0
CANCEL_WAIT_S = 5.0


# ------------------------------------------------------------------ wiring


class _ThreadConversation(JobConversation):
    """A job's request and results in its token's "API · <name>" conversation."""

    def __init__(self, threads: ApiThreads, store: ApiJobStore) -> None:
        self._threads = threads
        self._store = store
        self._open: dict[str, ApiConversation] = {}

    async def open(self, job: ApiJobRecord) -> tuple[str, str | None]:
        caller = job.request.get("caller") or {}
        where = await self._threads.open(
            job.user_id, str(caller.get("token_id") or job.token_id), str(caller.get("token_name"))
        )
        self._open[job.id] = where
        await self._threads.add_request(where, str(caller.get("user_name") or "API"), _asked(job))
        return where.thread_id, where.reply_step_id

    async def close(
        self, job: ApiJobRecord, thread_id: str, text: str, artifact: ToolArtifact | None
    ) -> None:
        where = self._open.pop(job.id, None)
        if where is None:
            return
        images: list[ImageRecord] = [record for record, _ in artifact.images] if artifact else []
        row = await self._store.get_any(job.id)
        await self._threads.add_reply(
            where, f"Job `{job.id}` ({job.kind}): {text}", images, is_error=row.status == "failed"
        )


def _asked(job: ApiJobRecord) -> str:
    args = job.request.get("args") or {}
    shown = json.dumps(args, ensure_ascii=False, sort_keys=True)
    return f"API job `{job.id}`: {job.kind} {shown[:2000]}"


def _describe(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a job's failure, as the API words the same error."""
    if isinstance(exc, AtelierError):
        api = from_core(exc)
        if api is not None:
            return api.code or api.type, api.message
        return "job_failed", exc.message
    log.error("api_job_crashed", error=type(exc).__name__, exc_info=exc)
    return "server_error", "The job failed because of an error in the server."


_runners: dict[int, tuple[Runtime, ApiJobRunner]] = {}
_deliveries: set[asyncio.Task[str]] = set()


def runner_for(runtime: Runtime) -> ApiJobRunner:
    """This app's runner, made on first use (the tools it drives load lazily too)."""
    held = _runners.get(id(runtime))
    if held is not None and held[0] is runtime:
        return held[1]
    store = ApiJobStore(runtime.engine)

    async def finished(job: ApiJobRecord) -> None:
        if job.webhook_url:
            payload = {
                "type": f"job.{job.status}",
                "created": int(datetime.now().timestamp()),
                "data": job_json(runtime, job),
            }
            task = asyncio.create_task(
                webhooks.deliver(runtime.settings, runtime.auth_secret, store, job, payload)
            )
            _deliveries.add(task)
            task.add_done_callback(_deliveries.discard)

    runner = ApiJobRunner(
        runtime.services,
        store,
        _ThreadConversation(ApiThreads(runtime.engine), store),
        describe_error=_describe,
        on_finished=finished,
    )
    _runners[id(runtime)] = (runtime, runner)
    return runner


# ------------------------------------------------------------------ answers


def _when(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def job_json(runtime: Runtime, job: ApiJobRecord) -> dict[str, Any]:
    """A job as the API shows it; result images carry a signed link to their file."""
    result = job.result
    if result is not None:
        result = dict(result)
        for key in ("images", "videos"):
            if isinstance(result.get(key), list):
                result[key] = [_linked(runtime, item) for item in result[key]]
    fraction = job.progress_done / job.progress_total if job.progress_total else None
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "created_at": _when(job.created_at),
        "started_at": _when(job.started_at),
        "finished_at": _when(job.finished_at),
        "progress": {
            "done": job.progress_done,
            "total": job.progress_total,
            "fraction": round(min(1.0, fraction), 4) if fraction is not None else None,
            "note": job.progress_note,
        },
        "result": result,
        "error": (
            {"code": job.error_code, "message": job.error_message}
            if job.error_message is not None
            else None
        ),
        "cancel_requested": job.cancel_requested,
        "webhook": {"status": job.webhook_status} if job.webhook_url else None,
        "conversation_id": job.thread_id,
        "request": job.request.get("args") or {},
    }


def _linked(runtime: Runtime, item: Any) -> Any:
    if not isinstance(item, dict) or not item.get("media_key"):
        return item
    key = str(item["media_key"])
    shown = {k: v for k, v in item.items() if k not in ("media_key", "poster_key")}
    linked = {**shown, "url": f"/media/{key}?{sign(runtime.auth_secret, key)}"}
    poster = item.get("poster_key")
    if poster:  # a clip's first frame, signed like the clip
        linked["poster_url"] = f"/media/{poster}?{sign(runtime.auth_secret, str(poster))}"
    return linked


class JobProgress(BaseModel):
    done: int
    total: int
    fraction: float | None
    note: str | None


class JobError(BaseModel):
    code: str | None
    message: str


class Job(BaseModel):
    """A job's state (documented shape of `job_json`)."""

    id: str
    object: Literal["job"]
    kind: Literal["image", "batch", "video", "training"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: int
    started_at: int | None
    finished_at: int | None
    progress: JobProgress
    result: dict[str, Any] | None
    error: JobError | None
    cancel_requested: bool
    webhook: dict[str, Any] | None
    conversation_id: str | None
    request: dict[str, Any]


class JobList(BaseModel):
    object: Literal["list"]
    data: list[Job]
    has_more: bool


class WebhookSecret(BaseModel):
    secret: str
    created_at: int


class WebhookSecretState(BaseModel):
    exists: bool
    created_at: int | None


def _store(runtime: Runtime) -> ApiJobStore:
    return runner_for(runtime).store


# ------------------------------------------------------------------ routes


@router.post("/jobs", status_code=202, response_model=Job)
async def create_job(caller: Caller, body: JobCreate) -> JSONResponse:
    """Start a job; answers at once with it, `queued`. Poll it, stream its events, or
    give `webhook_url` to be told when it ends."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    runner = runner_for(runtime)
    if body.webhook_url is not None:
        await _check_webhook(runtime, runner.store, caller, body.webhook_url)
    slot = await api_limits.acquire_slot(caller)  # 429 with Retry-After when all are taken
    try:
        job = await runner.store.create(
            user_id=caller.user_id,
            token_id=caller.token_id,
            kind=body.kind,
            request={
                "args": body.tool_args(),
                "confirm_spend": body.confirm_spend,
                "caller": {
                    "token_id": caller.token_id,
                    "token_name": caller.token_name,
                    "user_name": caller.user_name,
                },
            },
            webhook_url=body.webhook_url,
            instance_id=runtime.instances.id if runtime.instances is not None else None,
        )
    except BaseException:
        await api_limits.release_slot(caller, slot)
        raise

    async def release() -> None:
        await api_limits.release_slot(caller, slot)

    runner.submit(job, release)
    log.info("api_job_created", job=job.id, kind=job.kind, token=caller.token_id)
    return JSONResponse(job_json(runtime, job), status_code=202, headers=_NO_STORE)


async def _check_webhook(runtime: Runtime, store: ApiJobStore, caller: ApiCaller, url: str) -> None:
    if await store.webhook_nonce(caller.user_id) is None:
        raise ApiError(
            400,
            "Make your webhook signing secret first (POST /api/v1/webhook-secret): every "
            "webhook is signed with it.",
            param="webhook_url",
            code="webhook_secret_missing",
        )
    if not await webhooks.permitted(runtime.settings, url):
        raise ApiError(
            400,
            "webhook_url must be an http(s) URL of a public address. Private, loopback and "
            "link-local addresses are refused unless the operator lists the host in "
            "ATELIER_FETCH_ALLOW_HOSTS.",
            param="webhook_url",
            code="webhook_url_refused",
        )


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
    before: Annotated[str | None, Query(max_length=64, description="A job id: older ones.")] = None,
) -> JSONResponse:
    """Your jobs, newest first."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    store = _store(runtime)
    older_than = (await store.get(before, caller.user_id)).created_at if before else None
    jobs = await store.for_user(caller.user_id, limit=limit + 1, before=older_than, status=status)
    body = {
        "object": "list",
        "data": [job_json(runtime, job) for job in jobs[:limit]],
        "has_more": len(jobs) > limit,
    }
    return JSONResponse(body, headers=_NO_STORE)


@router.get("/jobs/{job_id}", response_model=Job)
async def get_job(caller: Caller, job_id: str) -> JSONResponse:
    """One of your jobs: its state, progress, results or error."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    job = await _store(runtime).get(job_id, caller.user_id)
    return JSONResponse(job_json(runtime, job), headers=_NO_STORE)


@router.post("/jobs/{job_id}/cancel", response_model=Job)
async def cancel_job(caller: Caller, job_id: str) -> JSONResponse:
    """Stop one of your jobs. What it made before the stop is kept (and paid for); what
    was reserved for the rest is given back. A finished job is answered as it is."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    runner = runner_for(runtime)
    job = await runner.store.request_cancel(job_id, caller.user_id)
    if not job.final:
        event = runner.watch(job.id)
        try:
            if runner.is_local(job.id):
                await runner.cancel(job.id)
            async with asyncio.timeout(CANCEL_WAIT_S):
                while not job.final:
                    event.clear()
                    job = await runner.store.get(job.id, caller.user_id)
                    if not job.final:
                        with _suppress_timeout():
                            await asyncio.wait_for(event.wait(), SSE_POLL_S)
        except TimeoutError:
            pass  # still stopping (another process runs it): the row says cancel_requested
        finally:
            runner.unwatch(job.id, event)
    return JSONResponse(job_json(runtime, job), headers=_NO_STORE)


@router.get(
    "/jobs/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def job_events(caller: Caller, job_id: str) -> StreamingResponse:
    """The job as server-sent events: `status` when its state changes, `progress` as it
    advances (data: the job), then `end` once it is final. Leaving does not stop it."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    runner = runner_for(runtime)
    job = await runner.store.get(job_id, caller.user_id)  # 404 before the stream opens
    return StreamingResponse(
        _events(runtime, runner, job.id, caller.user_id),
        media_type="text/event-stream",
        headers={**_NO_STORE, "X-Accel-Buffering": "no"},
    )


async def _events(
    runtime: Runtime, runner: ApiJobRunner, job_id: str, user_id: str
) -> AsyncIterator[str]:
    event = runner.watch(job_id)
    last_status: str | None = None
    last_progress: tuple[int, int, str | None] | None = None
    quiet = 0.0
    try:
        while True:
            event.clear()
            job = await runner.store.get(job_id, user_id)
            progress = (job.progress_done, job.progress_total, job.progress_note)
            if job.status != last_status:
                last_status = job.status
                yield _sse("status", job_json(runtime, job))
                quiet = 0.0
            elif progress != last_progress:
                yield _sse("progress", job_json(runtime, job))
                quiet = 0.0
            last_progress = progress
            if job.status in FINAL:
                yield _sse("end", {"id": job.id, "status": job.status})
                return
            with _suppress_timeout():
                await asyncio.wait_for(event.wait(), SSE_POLL_S)
            quiet += SSE_POLL_S
            if quiet >= SSE_KEEPALIVE_S:
                yield ": keep-alive\n\n"
                quiet = 0.0
    finally:
        runner.unwatch(job_id, event)


def _sse(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class _suppress_timeout:  # noqa: N801 - used like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, TimeoutError)


@router.post("/webhook-secret", status_code=201, response_model=WebhookSecret, tags=["webhooks"])
async def new_webhook_secret(caller: Caller) -> JSONResponse:
    """Make (or replace) your webhook signing secret. It is shown only now: keep it. A
    new one replaces the old at once. Verify `Atelier-Signature: t=<unix>,v1=<hex>` as
    HMAC-SHA256(secret, "<t>.<raw body>")."""
    await api_limits.admit(caller)
    runtime = get_runtime()
    store = _store(runtime)
    nonce = await store.new_webhook_nonce(caller.user_id)
    key = await store.webhook_nonce(caller.user_id)
    created = _when(key[1]) if key else None
    secret = webhooks.derive_secret(runtime.auth_secret, caller.user_id, nonce)
    log.info("webhook_secret_made", token=caller.token_id)
    return JSONResponse(
        {"secret": secret, "created_at": created}, status_code=201, headers=_NO_STORE
    )


@router.get("/webhook-secret", response_model=WebhookSecretState, tags=["webhooks"])
async def webhook_secret_state(caller: Caller) -> JSONResponse:
    """Whether you have a webhook signing secret, and since when (never the secret)."""
    await api_limits.admit(caller)
    key = await _store(get_runtime()).webhook_nonce(caller.user_id)
    body = {"exists": key is not None, "created_at": _when(key[1]) if key else None}
    return JSONResponse(body, headers=_NO_STORE)
