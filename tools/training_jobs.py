"""Trainings as background jobs: started by a tool call, outliving it, stoppable, recorded.

Why here (tools/) and not in chat_app: starting, stopping and resuming are tool actions
(the agent and the slash commands both call them), and the money side goes through
`tools.spending`. The chat only supplies a `WatcherFactory` that shows progress; without
one (tests, a CLI) jobs run the same and only the database shows them.

One `TrainingJobs` lives in the app's Runtime. `start` runs `spending.paid_action` inside
the background task, so the reservation is held for the whole training and settled when
it ends: with the measured GPU time (local) or the estimate (Replicate reports no run
time for trainings through the client), also for a stopped or failed run, for the time
it used. The tool awaits only until the reservation is made and the registry row exists,
then returns: the chat stays usable.

While a job runs, a publisher wakes every `publish_every_s`, writes the step and the
loss history to the row (so a reloaded page and `/train status` read them from the
database) and tells the watcher, which updates the chat message and its loss chart.
On start-up, rows left queued/running by a dead process become "interrupted"
(`LoraStore.mark_interrupted`); a row names the process running it (the ledger's
instance), so another live process's trainings are left alone. Local ones resume from
their newest checkpoint.

Length: a job's life (start, publish, stop, finish, interrupt) is one state machine
over one row and one reservation; split, its transitions would be in several places.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.errors import AtelierError, InvalidInput
from core.logging_setup import get_logger
from memory.loras import LoraRecord, LoraStore, NewLora
from pipelines.catalogue.pricing import Cost
from pipelines.training.lora_dataset import PreparedDataset
from pipelines.training.registry import TrainingBackendRegistry
from tools import spending
from tools.context import QuietPort
from tools.training_estimate import TrainingEstimate, duration

if TYPE_CHECKING:
    from pipelines.training.lora_training import TrainingParams, TrainingProgress
    from tools.context import ToolContext

log = get_logger(__name__)


class TrainingWatcher(Protocol):
    """What shows a running training (the chat's progress message)."""

    async def update(self, record: LoraRecord, note: str, eta_s: float | None) -> None: ...

    async def sample(self, record: LoraRecord, step: int, path: Path) -> None: ...

    async def finished(self, record: LoraRecord, text: str) -> None: ...


# (the registry row, the first line to show) -> a watcher, or None when nobody watches.
WatcherFactory = Callable[[LoraRecord, str], Awaitable[TrainingWatcher | None]]


@dataclass(frozen=True)
class TrainingSpec:
    """A training the user confirmed: everything the background job needs."""

    name: str
    backend: str  # local | replicate
    base_model: str  # a local model id/folder, or the Replicate trainer
    trigger_word: str
    dataset: PreparedDataset
    estimate: TrainingEstimate
    steps: int
    params: TrainingParams | None = None  # local
    destination: str | None = None  # replicate: owner/name to push the version to
    rank: int = 16
    learning_rate: float = 1e-4
    resume: LoraRecord | None = None  # continue this row from its checkpoint
    manifest: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    spec: TrainingSpec
    ctx: ToolContext
    record: LoraRecord | None = None
    progress: TrainingProgress | None = None
    watcher: TrainingWatcher | None = None
    stop_requested: bool = False
    started_at: float = field(default_factory=time.monotonic)
    train_started: float | None = None
    samples_shown: int = 0
    last_step: int = -1
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def elapsed(self) -> float:
        return time.monotonic() - (self.train_started or self.started_at)


@dataclass(frozen=True)
class _Outcome:
    values: dict[str, Any]
    cost: Cost | None
    text: str


class _ConfirmedPort(QuietPort):
    """A training runs on after its message: nobody watches, and the user already said
    yes to this estimate in the training's own confirmation."""

    async def confirm(self, question: str) -> bool:
        return True


class TrainingJobs:
    def __init__(
        self,
        loras: LoraStore,
        lora_dir: Path,
        *,
        backends: TrainingBackendRegistry | None = None,
        watcher_factory: WatcherFactory | None = None,
        publish_every_s: float = 1.0,
    ) -> None:
        self.loras = loras
        self.lora_dir = lora_dir  # where datasets, checkpoints and local LoRAs live
        # Which trainers are configured (pipelines/training/registry.py); none: all refuse.
        self.backends = backends or TrainingBackendRegistry({})
        self.watcher_factory = watcher_factory
        self.publish_every_s = publish_every_s
        self._jobs: dict[str, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._told: set[str] = set()

    # ------------------------------------------------------------------ starting

    async def start(self, ctx: ToolContext, spec: TrainingSpec) -> LoraRecord:
        """Reserve the cost, create (or reopen) the row, start the job; return the row.

        Raises what the reservation raises (a budget exceeded) before anything runs.
        """
        job = _Job(spec=spec, ctx=replace(ctx, port=_ConfirmedPort()))
        started: asyncio.Future[LoraRecord] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(job, started), name=f"training-{spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await started

    def running(self, user_id: str) -> list[LoraRecord]:
        return [
            job.record
            for job in self._jobs.values()
            if job.record is not None and job.record.user_id == user_id
        ]

    def is_running(self, lora_id: str) -> bool:
        return lora_id in self._jobs

    async def wait(self, lora_id: str) -> None:
        """Until the job of that row has ended (tests, shutdown)."""
        job = self._jobs.get(lora_id)
        if job is not None:
            await job.done.wait()

    def stop(self, user_id: str, name: str | None = None) -> LoraRecord:
        """Ask the user's running training (the only one, or `name`) to stop."""
        mine = [job for job in self._jobs.values() if job.record and job.record.user_id == user_id]
        if name is not None:
            mine = [job for job in mine if job.record and job.record.name.lower() == name.lower()]
        if not mine:
            what = f"called {name!r} " if name else ""
            raise InvalidInput(f"You have no training {what}running. `/train status` lists them.")
        if len(mine) > 1:
            names = ", ".join(repr(job.record.name) for job in mine if job.record)
            raise InvalidInput(f"Several trainings are running ({names}); name the one to stop.")
        job = mine[0]
        job.stop_requested = True
        if job.progress is not None:
            job.progress.cancel()
        assert job.record is not None
        return job.record

    async def stop_all(self) -> None:
        """At shutdown: stop every job (local ones keep a checkpoint) and wait a little."""
        for job in list(self._jobs.values()):
            job.stop_requested = True
            if job.progress is not None:
                job.progress.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=30)

    def untold_interrupted(self, records: list[LoraRecord]) -> list[LoraRecord]:
        """Interrupted rows not yet mentioned to their user since this process started."""
        fresh = [r for r in records if r.status == "interrupted" and r.id not in self._told]
        self._told.update(r.id for r in fresh)
        return fresh

    # ------------------------------------------------------------------ the job

    async def _run(self, job: _Job, started: asyncio.Future[LoraRecord]) -> None:
        spec = job.spec
        outcome: _Outcome | None = None
        failure: BaseException | None = None
        try:
            async with spending.paid_action(
                job.ctx,
                backend=spec.backend,
                model=spec.base_model,
                what="training",
                estimate=spec.estimate.cost,
                label=f"training the LoRA '{spec.name}'",
            ) as charge:
                job.record = await self._open_row(job)
                self._jobs[job.record.id] = job
                job.watcher = await self._watcher(job)
                started.set_result(job.record)
                try:
                    outcome = await self._train(job)
                except BaseException:
                    charge.record(self._cost_so_far(job))
                    raise
                if outcome.cost is not None:
                    charge.record(outcome.cost)
        except BaseException as exc:  # noqa: BLE001 - every ending is recorded below
            if not started.done():
                started.set_exception(exc)
                return
            failure = exc
        try:
            if outcome is not None:
                # What the ledger settled, kept with the LoRA so that whoever reads the
                # record (the jobs API) sees what it cost.
                usd = charge.settled_usd
                metrics = outcome.values.setdefault("metrics", {})
                metrics["cost_usd"] = str(usd) if usd is not None else None
                await self._finish(job, "succeeded", outcome.values, outcome.text)
            else:
                await self._ended_early(job, failure)
        except Exception:
            log.exception("training_finish_failed", name=spec.name)
        finally:
            if job.record is not None:
                self._jobs.pop(job.record.id, None)
            job.done.set()

    async def _open_row(self, job: _Job) -> LoraRecord:
        """The row, owned by this process (as its reservation is): another process's
        start-up leaves it running while this one lives (`LoraStore.mark_interrupted`)."""
        spec, ctx = job.spec, job.ctx
        ledger = ctx.services.ledger
        instance_id = ledger.instance_id if ledger is not None else None
        if spec.resume is not None:
            return await self.loras.update(
                spec.resume.id,
                ctx.turn.user_id,
                status="running",
                error=None,
                finished_at=None,
                total_steps=spec.steps,
                parameters={**spec.resume.parameters, **spec.parameters},
                instance_id=instance_id,
            )
        return await self.loras.create(
            ctx.turn.user_id,
            NewLora(
                name=spec.name,
                backend=spec.backend,
                base_model=spec.base_model,
                trigger_word=spec.trigger_word,
                total_steps=spec.steps,
                dataset=spec.manifest,
                parameters=spec.parameters,
                thread_id=ctx.turn.thread_id,
                instance_id=instance_id,
            ),
        )

    async def _watcher(self, job: _Job) -> TrainingWatcher | None:
        if self.watcher_factory is None or job.record is None:
            return None
        spec = job.spec
        verb = "Resuming" if spec.resume else "Training"
        text = (
            f"⏳ **{verb} LoRA '{spec.name}'** ({spec.backend}, `{spec.base_model}`): "
            f"{spec.steps} steps, {spec.estimate.describe()}."
        )
        try:
            watcher = await self.watcher_factory(job.record, text)
        except Exception:
            log.warning("training_display_failed", exc_info=True)
            return None
        if watcher is not None:
            message_id = getattr(watcher, "message_id", None)
            if message_id:
                job.record = await self.loras.update(
                    job.record.id, job.record.user_id, message_id=message_id
                )
        return watcher

    async def _train(self, job: _Job) -> _Outcome:
        from pipelines.training.lora_training import TrainingProgress

        job.progress = TrainingProgress()
        if job.stop_requested:
            job.progress.cancel()
        job.train_started = time.monotonic()
        publisher = asyncio.create_task(self._publish_loop(job))
        try:
            run = {"local": self._train_local, "replicate": self._train_replicate}
            return await run[job.spec.backend](job)
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            await self._publish(job)

    async def _train_local(self, job: _Job) -> _Outcome:
        from pipelines.training.lora_training import LocalTrainingRequest

        spec, ctx = job.spec, job.ctx
        backend: Any = ctx.services.backends.get("local")
        trainer = self.backends.get("local")
        assert spec.params is not None and job.progress is not None
        request = LocalTrainingRequest(
            spec.name,
            backend.model_source(spec.base_model),  # checked again: a resume reads the row
            spec.dataset,
            spec.params,
            resume=spec.resume is not None,
        )
        result = await trainer.train(request, job.progress)
        seconds = job.elapsed()
        lora_dir: Path = backend.lora_dir
        losses = [[step, round(loss, 6)] for step, loss in result.losses]
        trained_steps = spec.steps - (result.resumed_from or 0)
        train_s = result.timings.get("train_s", seconds)
        metrics = {
            "final_loss": losses[-1][1] if losses else None,
            "probe_loss_start": result.probe_losses[0][1] if result.probe_losses else None,
            "probe_loss_end": result.probe_losses[-1][1] if result.probe_losses else None,
            "steps": spec.steps,
            "resumed_from": result.resumed_from,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(train_s / max(1, trained_steps), 4),
            "resolution": spec.dataset.resolution,
            "device": result.device,
            "dtype": result.dtype,
        }
        files = {
            "diffusers": _relative(result.lora_file, lora_dir),
            "kohya": _relative(result.kohya_file, lora_dir),
            "manifest": _relative(result.manifest, lora_dir),
            "training_record": _relative(result.record, lora_dir),
            "samples": [_relative(path, lora_dir) for _, path in result.samples],
        }
        cost = None
        if ctx.services.prices is not None:
            cost = ctx.services.prices.actual(
                "local", spec.base_model, gpu_seconds=round(seconds, 3)
            )
        text = (
            f"✅ **LoRA '{spec.name}' is trained** ({spec.steps} steps in "
            f"{duration(seconds)}, final loss {metrics['final_loss']}). Use it now: "
            f"*draw {spec.trigger_word} on a beach* — prompts with **{spec.trigger_word}** "
            f"apply it automatically on the local backend, or `/image {spec.trigger_word} on a "
            f"beach --lora {spec.name}`. Files: `{files['diffusers']}` (diffusers) and "
            f"`{files['kohya']}` (kohya, for AUTOMATIC1111/ComfyUI)."
        )
        values = {"files": files, "metrics": metrics, "losses": losses, "step": spec.steps}
        return _Outcome(values, cost, text)

    async def _train_replicate(self, job: _Job) -> _Outcome:
        from pipelines.training.replicate_training import ReplicateTrainingRequest

        spec = job.spec
        trainer = self.backends.get("replicate")
        assert spec.destination is not None and job.progress is not None
        request = ReplicateTrainingRequest(
            destination=spec.destination,
            dataset=spec.dataset,
            steps=spec.steps,
            learning_rate=spec.learning_rate,
            rank=spec.rank,
            trainer=spec.base_model,
        )
        result = await trainer.train(request, job.progress)
        seconds = job.elapsed()
        losses = [[step, round(loss, 6)] for step, loss in result.losses]
        metrics = {
            "final_loss": losses[-1][1] if losses else None,
            "steps": spec.steps,
            "seconds": round(seconds, 3),
            "training_id": result.training_id,
            "trainer_version": result.trainer_version,
            "weights_url": result.weights_url,
        }
        files = {"manifest": f"{spec.name}/manifest.json"}
        cost = _estimated_cost(spec.estimate)
        text = (
            f"✅ **LoRA '{spec.name}' is trained on Replicate** as `{result.version}`. Use it "
            f"now: `/image {spec.trigger_word} on a beach --backend replicate:{result.version}` "
            f"(the prompt must contain **{spec.trigger_word}**)."
        )
        values = {
            "files": files,
            "metrics": metrics,
            "losses": losses,
            "step": spec.steps,
            "replicate_version": result.version,
        }
        return _Outcome(values, cost, text)

    def _cost_so_far(self, job: _Job) -> Cost:
        """What a stopped or failed run used: its GPU time so far (or nothing)."""
        spec, prices = job.spec, job.ctx.services.prices
        seconds = round(job.elapsed(), 3) if job.train_started else 0.0
        if prices is None:
            return Cost(Decimal(0), "estimate", ["no price table"])
        if spec.backend == "local":
            return prices.actual("local", spec.base_model, gpu_seconds=seconds)
        estimate = prices.estimate("replicate", spec.base_model, seconds=seconds)
        return Cost(estimate.usd, "estimate", estimate.lines, unpriced=estimate.unpriced)

    # ------------------------------------------------------------------ progress

    async def _publish_loop(self, job: _Job) -> None:
        while True:
            await asyncio.sleep(self.publish_every_s)
            try:
                await self._publish(job)
            except Exception:
                log.warning("training_progress_write_failed", exc_info=True)

    async def _publish(self, job: _Job) -> None:
        """Write the step and losses to the row; show them and any new sample images."""
        progress, record = job.progress, job.record
        if progress is None or record is None:
            return
        latest = progress.latest
        step = latest.done if latest else 0
        if latest is not None and latest.total != job.spec.steps and job.spec.backend == "local":
            step = min(step, job.spec.steps)
        losses = [[s, round(v, 6)] for s, v in progress.losses]
        if step != job.last_step or len(losses) != len(record.losses):
            job.last_step = step
            await self.loras.progress(record.id, step=step, losses=losses)
            job.record = record = replace(record, step=step, losses=losses, status="running")
            if job.watcher is not None:
                await job.watcher.update(record, latest.note if latest else "", self._eta(job))
        samples = progress.samples
        if job.watcher is not None:
            for sample_step, path in samples[job.samples_shown :]:
                await job.watcher.sample(record, sample_step, path)
        job.samples_shown = len(samples)

    def _eta(self, job: _Job) -> float | None:
        if job.progress is None or job.record is None or job.train_started is None:
            return None
        losses = job.progress.losses
        if len(losses) < 2:
            return None
        done_here = losses[-1][0] - losses[0][0] + 1
        per_step = job.elapsed() / max(1, done_here)
        return per_step * max(0, job.spec.steps - losses[-1][0])

    # ------------------------------------------------------------------ endings

    async def _ended_early(self, job: _Job, failure: BaseException | None) -> None:
        spec = job.spec
        stopped = job.stop_requested or isinstance(failure, asyncio.CancelledError)
        checkpoint = None
        if spec.backend == "local" and self.backends.configured("local"):
            checkpoint = self.backends.get("local").checkpoint_step(spec.name)
        step = checkpoint or 0
        if stopped:
            status = "cancelled"
            if checkpoint:
                text = (
                    f"⏹ **Training of '{spec.name}' stopped at step {checkpoint}** of "
                    f"{spec.steps}; the checkpoint is kept. `/train resume {spec.name}` "
                    "continues from there."
                )
            elif spec.backend == "replicate":
                text = (
                    f"⏹ **Training of '{spec.name}' stopped**; the Replicate training was "
                    "cancelled (billing stops). Start it again to train it."
                )
            else:
                text = f"⏹ **Training of '{spec.name}' stopped** before its first step."
            error = None
        else:
            status = "failed"
            reason = (
                failure.message
                if isinstance(failure, AtelierError)
                else f"an internal error ({type(failure).__name__})"
            )
            if not isinstance(failure, AtelierError):
                log.error("training_failed", name=spec.name, exc_info=failure)
            resume = (
                f" `/train resume {spec.name}` continues from step {checkpoint}."
                if checkpoint
                else ""
            )
            text = f"❌ **Training of '{spec.name}' failed:** {reason}.{resume}"
            error = reason
        await self._finish(job, status, {"step": step, "error": error}, text)

    async def _finish(self, job: _Job, status: str, values: dict[str, Any], text: str) -> None:
        record = job.record
        if record is None:
            return
        if job.progress is not None and "losses" not in values:
            values["losses"] = [[s, round(v, 6)] for s, v in job.progress.losses]
        job.record = record = await self.loras.update(
            record.id, record.user_id, status=status, **values
        )
        log.info("training_ended", name=record.name, status=status, step=record.step)
        if job.watcher is not None:
            try:
                await job.watcher.finished(record, text)
            except Exception:
                log.warning("training_display_failed", exc_info=True)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _estimated_cost(estimate: TrainingEstimate) -> Cost:
    cost = estimate.cost
    return Cost(cost.usd, "estimate", list(cost.lines), unpriced=cost.unpriced)
