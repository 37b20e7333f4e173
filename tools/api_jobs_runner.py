"""Jobs of the jobs API, run in this process through the same tools as the chat.

A job is an asyncio task that outlives the request that made it and any SSE client
watching it. It runs the chat's tool for its kind (generate_image, start_batch,
generate_video, train_lora) with a `JobPort`, so it is priced, reserved, settled and
recorded like a chat request; its progress goes to the job's row (throttled) and wakes
whoever watches (`changes`). Batches and trainings are started by their tools and then
followed until they end, their own runners doing the work.

Cancelling: the row is marked (`cancel_requested`) by whichever process the request
reached; the job's own process sees it (at once if local, within a second otherwise) and
stops the work: the tool's task is cancelled (a paid action then releases or settles
what it reserved), a batch is stopped, a training is asked to stop. A batch's or a
training's start is let finish first (it is short), so nothing is left running unfollowed.
A batch is followed by the id its start hands back, never guessed from the conversation.

The slot the job holds (chat_app/api_limits, per-token concurrent jobs) is given back
by `release` when the task ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory.api_jobs import ApiJobRecord, ApiJobStore
from memory.loras import FINAL as LORA_FINAL
from pipelines.progress import Progress, ProgressUpdate
from tools import spending
from tools.context import GenerationDefaults, QuietPort, Services, ToolArtifact, ToolContext, Turn
from tools.turn_guard import TurnGuard

log = get_logger(__name__)

PROGRESS_WRITE_S = 0.5  # at most two progress writes a second per job
POLL_S = 1.0  # how often a followed batch/training and a remote cancel are looked at
_MARKDOWN = re.compile(r"[*_`]")


class ConfirmationRequired(spending.Declined):
    """The chat would have asked before spending this; an API job cannot ask."""


class JobPort(QuietPort):
    """A job's port: nobody answers questions, progress goes to the job.

    A question (a paid action above the user's confirmation threshold, or a batch's or
    training's start) is answered yes only when the caller said so up front
    (`confirm_spend`); otherwise it refuses, quoting the question, so the caller learns
    the estimate and the threshold. Hard budget limits hold either way (the ledger).
    """

    def __init__(self, listener: Callable[[ProgressUpdate], Awaitable[None]], confirm: bool):
        self._listener = listener
        self._confirm = confirm
        self.notes: list[str] = []

    async def confirm(self, question: str) -> bool:
        if self._confirm:
            return True
        asked = " ".join(_MARKDOWN.sub("", question).split())
        raise ConfirmationRequired(
            f"This job needs a confirmation that an API call cannot give: {asked} "
            'Nothing ran and nothing was spent. Create the job again with "confirm_spend": '
            "true to go ahead (your hard budget limits still apply)."
        )

    async def announce(self, text: str) -> None:
        self.notes.append(_MARKDOWN.sub("", text))

    def progress(self, label: str) -> Progress | None:
        return Progress(self._listener)


class JobConversation:
    """Where a job's request and results land in the user's history (the edge gives
    one: chat_app/jobs_api.py); this default lands them nowhere but a thread id."""

    async def open(self, job: ApiJobRecord) -> tuple[str, str | None]:
        """(thread id, message id the results hang under)."""
        raise NotImplementedError

    async def close(self, job: ApiJobRecord, thread_id: str, text: str, artifact: Any) -> None:
        """Write what the job made (or why it failed) into the conversation."""


# (exception) -> (error code, message) as the API reports them
DescribeError = Callable[[BaseException], tuple[str, str]]
Finished = Callable[[ApiJobRecord], Awaitable[None]]


@dataclass
class _Live:
    task: asyncio.Task[None] | None = None
    work: asyncio.Task[Any] | None = None  # the tool call, cancelled on cancel
    # A batch's or training's start is not cancelled half-way (it could leave a batch or
    # a training running that nobody follows): it ends, then `stop` stops what it began.
    work_cancellable: bool = True
    stop: Callable[[], Awaitable[None]] | None = None  # a batch's or training's stop
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # a follower looks again now
    last_write: float = 0.0
    cancelled: bool = False


class ApiJobRunner:
    def __init__(
        self,
        services: Services,
        store: ApiJobStore,
        conversation: JobConversation,
        *,
        describe_error: DescribeError,
        on_finished: Finished,
    ) -> None:
        self.services = services
        self.store = store
        self.conversation = conversation
        self.describe_error = describe_error
        self.on_finished = on_finished
        self._live: dict[str, _Live] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}

    # -- public -------------------------------------------------------------------

    def submit(self, job: ApiJobRecord, release: Callable[[], Awaitable[None]]) -> None:
        live = self._live.setdefault(job.id, _Live())
        live.task = asyncio.create_task(self._run(job, live, release), name=f"api-job-{job.id}")

    def is_local(self, job_id: str) -> bool:
        return job_id in self._live

    async def cancel(self, job_id: str) -> None:
        """Stop a job this process runs (its row is already marked)."""
        live = self._live.get(job_id)
        if live is None or live.cancelled:
            return
        live.cancelled = True
        live.wake.set()
        if live.stop is not None:
            with contextlib.suppress(AtelierError):
                await live.stop()
        if live.work is not None and live.work_cancellable:
            live.work.cancel()

    def watch(self, job_id: str) -> asyncio.Event:
        """An event set whenever this process changes the job (SSE clients wait on it
        between reads, with a timeout for jobs run by another process)."""
        event = asyncio.Event()
        self._watchers.setdefault(job_id, set()).add(event)
        return event

    def unwatch(self, job_id: str, event: asyncio.Event) -> None:
        watchers = self._watchers.get(job_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(job_id, None)

    async def stop_all(self) -> None:
        """At shutdown: the tasks are cancelled; their rows are failed at next start-up."""
        tasks = [live.task for live in self._live.values() if live.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    # -- running ------------------------------------------------------------------

    async def _run(
        self, job: ApiJobRecord, live: _Live, release: Callable[[], Awaitable[None]]
    ) -> None:
        try:
            await self._lifecycle(job, live)
        finally:
            self._live.pop(job.id, None)
            self._notify(job.id)
            try:
                await release()
            except Exception:
                log.exception("api_job_slot_release_failed", job=job.id)

    async def _lifecycle(self, job: ApiJobRecord, live: _Live) -> None:
        thread_id: str | None = None
        try:
            thread_id, message_id = await self.conversation.open(job)
            if not await self.store.started(job.id, thread_id=thread_id):
                return  # cancelled while queued: the row already says so
            self._notify(job.id)
            # A cancel that came while it was queued only marked the row (and `live`):
            # the job ends here, before any work, instead of running regardless.
            if live.cancelled or (await self.store.get_any(job.id)).cancel_requested:
                live.cancelled = True
                raise asyncio.CancelledError
            port = JobPort(self._listener(job.id, live), bool(job.request.get("confirm_spend")))
            ctx = ToolContext(
                self.services,
                Turn(
                    user_id=job.user_id,
                    thread_id=thread_id,
                    message_id=message_id,
                    defaults=GenerationDefaults(),
                    guard=TurnGuard(),
                ),
                port=port,
            )
            watcher = asyncio.create_task(self._watch_cancel(job.id, live))
            try:
                text, artifact, result = await self._work(job, ctx, live)
            finally:
                watcher.cancel()
            result["notes"] = [*port.notes, *getattr(artifact, "notes", [])]
            await self._end(job, "succeeded", result=result)
            await self._tell(job, thread_id, text, artifact)
        except asyncio.CancelledError:
            if not live.cancelled:
                raise  # shutdown: the next start-up fails the row
            await self._end(
                job,
                "cancelled",
                error=("cancelled", "Cancelled: what was made before the stop is kept."),
            )
            await self._tell(job, thread_id, "The job was cancelled.", None)
        except Exception as exc:
            code, message = self.describe_error(exc)
            if live.cancelled:
                code, message = "cancelled", "Cancelled: what was made before the stop is kept."
            await self._end(
                job,
                "cancelled" if live.cancelled else "failed",
                result=getattr(exc, "result", None),
                error=(code, message),
            )
            await self._tell(job, thread_id, message, None)

    async def _work(
        self, job: ApiJobRecord, ctx: ToolContext, live: _Live
    ) -> tuple[str, ToolArtifact | None, dict[str, Any]]:
        kind, args = job.kind, dict(job.request.get("args") or {})
        if kind == "image":
            from tools.generate_image import generate_image

            text, artifact = await self._tool(live, generate_image(ctx, **args))
            return text, artifact, _images_result(artifact)
        if kind == "video":
            from tools.generate_video import generate_video

            text, artifact = await self._tool(live, generate_video(ctx, **args))
            return text, artifact, _videos_result(artifact)
        if kind == "batch":
            return await self._batch(job, ctx, live, args)
        if kind == "training":
            return await self._training(job, ctx, live, args)
        raise InvalidInput(f"Unknown job kind {kind!r}.")

    async def _tool(self, live: _Live, call: Awaitable[Any], *, cancellable: bool = True) -> Any:
        if live.cancelled and cancellable:
            if asyncio.iscoroutine(call):
                call.close()  # never started: nothing to undo
            raise asyncio.CancelledError
        live.work = asyncio.ensure_future(call)
        live.work_cancellable = cancellable
        try:
            return await live.work
        finally:
            live.work = None

    async def _batch(
        self, job: ApiJobRecord, ctx: ToolContext, live: _Live, args: dict[str, Any]
    ) -> tuple[str, ToolArtifact | None, dict[str, Any]]:
        from tools.start_batch import launch, runner_of, start_batch

        runner = runner_of(ctx)
        # `launch` hands back the row it made: the batch this job follows, whatever else
        # starts in the same conversation at the same moment.
        text, batch = await self._tool(
            live, launch(ctx, start_batch.validate(args)), cancellable=False
        )
        user_id = job.user_id

        async def stop() -> None:
            await runner.stop(batch.id, user_id, "Cancelled over the API.")

        live.stop = stop
        if live.cancelled:  # a cancel that came while the batch was being made
            await stop()
        seen: tuple[int, int, str] | None = None
        while True:
            batch = await runner.store.get(batch.id, user_id)
            items = await runner.store.items(batch.id, user_id)
            done = sum(item.status in ("done", "failed") for item in items)
            if (done, len(items), batch.status) != seen:
                seen = (done, len(items), batch.status)
                await self._progress(job.id, live, done, len(items), batch.status, force=True)
            if batch.status in ("done", "stopped"):
                break
            await self._wait_change(live, POLL_S)
        result = await self._batch_result(ctx, batch, items)
        if live.cancelled:
            raise _Stopped("Cancelled: what was made before the stop is kept.", result)
        if batch.status != "done":
            raise _Stopped(batch.stop_reason or "The batch was stopped.", result)
        if items and not any(item.status == "done" for item in items):
            # Nothing made is not a success, whatever the batch's own bookkeeping says.
            reasons = sorted({item.error for item in items if item.error})
            why = f" ({'; '.join(reasons)[:300]})" if reasons else ""
            raise _Stopped(f"Every item of the batch failed{why}.", result)
        return text, None, result

    async def _batch_result(self, ctx: ToolContext, batch: Any, items: list[Any]) -> dict[str, Any]:
        """Every item (status, cost, error) and every image made, with its own cost."""
        images: list[dict[str, Any]] = []
        for item in items:
            for image_id in item.image_ids:
                try:
                    record = await ctx.services.images.get(image_id, batch.user_id)
                except AtelierError:
                    continue  # deleted since
                images.append({**_image(record), "item": item.label})
        return {
            "batch": {
                "id": batch.id,
                "status": batch.status,
                "stop_reason": batch.stop_reason,
                "items": len(items),
                "done": sum(item.status == "done" for item in items),
                "failed": sum(item.status == "failed" for item in items),
            },
            "items": [
                {
                    "label": item.label,
                    "status": item.status,
                    "image_ids": list(item.image_ids),
                    "cost_usd": str(item.cost_usd),
                    "error": item.error,
                }
                for item in items
            ],
            "images": images,
            "cost_usd": str(sum((item.cost_usd for item in items), Decimal(0))),
        }

    async def _training(
        self, job: ApiJobRecord, ctx: ToolContext, live: _Live, args: dict[str, Any]
    ) -> tuple[str, ToolArtifact | None, dict[str, Any]]:
        from tools.train_lora import train_lora

        jobs = ctx.services.trainings
        if jobs is None:
            raise InvalidInput("LoRA training is not available in this app.")
        text, _ = await self._tool(live, train_lora(ctx, **args), cancellable=False)
        # The name is the user's own and unique among their LoRAs (train_lora refuses a
        # taken one), so this is the row the call just made.
        record = await jobs.loras.find(job.user_id, str(args["name"]))
        if record is None:
            raise RuntimeError("the training started but its row is missing")
        name, user_id = record.name, job.user_id

        async def stop() -> None:
            if jobs.is_running(record.id):
                jobs.stop(user_id, name)

        live.stop = stop
        if live.cancelled:
            await stop()
        seen: tuple[int, int, str] | None = None
        while True:
            record = await jobs.loras.by_id(record.id, user_id)
            if record.status in LORA_FINAL and not jobs.is_running(record.id):
                break
            if (record.step, record.total_steps, record.status) != seen:
                seen = (record.step, record.total_steps, record.status)
                await self._progress(
                    job.id, live, record.step, record.total_steps, record.status, force=True
                )
            await self._wait_change(live, POLL_S)
        result = {
            "lora": {
                "id": record.id,
                "name": record.name,
                "status": record.status,
                "trigger_word": record.trigger_word,
                "backend": record.backend,
                "base_model": record.base_model,
                "step": record.step,
                "total_steps": record.total_steps,
            },
            # Settled in the ledger when the training succeeded; None before that.
            "cost_usd": record.metrics.get("cost_usd"),
        }
        await self._progress(
            job.id, live, record.step, record.total_steps, record.status, force=True
        )
        if live.cancelled:
            raise _Stopped("Cancelled: what was made before the stop is kept.", result)
        if record.status != "succeeded":
            raise _Stopped(record.error or f"The training ended {record.status}.", result)
        return text, None, result

    async def _wait_change(self, live: _Live, seconds: float) -> None:
        """Sleep up to `seconds`, less when a cancel comes (the follower then looks)."""
        live.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(live.wake.wait(), seconds)

    async def _watch_cancel(self, job_id: str, live: _Live) -> None:
        """A cancel asked of another process reaches this one through the row."""
        while not live.cancelled:
            await asyncio.sleep(POLL_S)
            row = await self.store.get_any(job_id)
            if row.cancel_requested:
                await self.cancel(job_id)

    def _listener(self, job_id: str, live: _Live) -> Callable[[ProgressUpdate], Awaitable[None]]:
        async def listen(update: ProgressUpdate) -> None:
            await self._progress(job_id, live, update.done, update.total, update.note)

        return listen

    async def _progress(
        self, job_id: str, live: _Live, done: int, total: int, note: str, *, force: bool = False
    ) -> None:
        now = time.monotonic()
        if not force and now - live.last_write < PROGRESS_WRITE_S and done < total:
            return
        live.last_write = now
        await self.store.progress(job_id, done, total, note)
        self._notify(job_id)

    async def _end(
        self,
        job: ApiJobRecord,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        changed = await self.store.finish(
            job.id,
            status,
            result=result,
            error_code=error[0] if error else None,
            error_message=error[1] if error else None,
        )
        self._notify(job.id)
        log.info("api_job_finished", job=job.id, kind=job.kind, status=status)
        if changed:
            try:
                await self.on_finished(await self.store.get_any(job.id))
            except Exception:
                log.exception("api_job_finish_hook_failed", job=job.id)

    async def _tell(
        self, job: ApiJobRecord, thread_id: str | None, text: str, artifact: ToolArtifact | None
    ) -> None:
        if thread_id is None:
            return
        try:
            await self.conversation.close(job, thread_id, text, artifact)
        except Exception:
            log.exception("api_job_conversation_failed", job=job.id)

    def _notify(self, job_id: str) -> None:
        for event in self._watchers.get(job_id, ()):
            event.set()


class _Stopped(AtelierError):
    """A followed batch or training ended without succeeding; carries what it made."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def _images_result(artifact: ToolArtifact) -> dict[str, Any]:
    images = [_image(record) for record, _ in artifact.images]
    costs = [record.cost_usd for record, _ in artifact.images if record.cost_usd is not None]
    return {
        "images": images,
        "cost_usd": str(sum(costs, Decimal(0))) if costs else None,
    }


def _videos_result(artifact: ToolArtifact) -> dict[str, Any]:
    videos = [
        {
            **_image(record),
            "seconds": record.seconds,
            "frames": record.frames,
            "fps": record.fps,
            "poster_key": record.poster_key,
        }
        for record, _ in artifact.videos
    ]
    costs = [r.cost_usd for r, _ in [*artifact.videos, *artifact.images] if r.cost_usd is not None]
    return {
        "videos": videos,
        "images": [_image(record) for record, _ in artifact.images],  # a drawn keyframe
        "cost_usd": str(sum(costs, Decimal(0))) if costs else None,
    }


def _image(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "media_key": record.media_key,
        "mime": record.mime,
        "width": record.width,
        "height": record.height,
        "backend": record.backend,
        "model": record.model,
        "seed": record.seed,
        "cost_usd": str(record.cost_usd) if record.cost_usd is not None else None,
    }
