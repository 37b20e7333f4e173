"""The app's long-lived objects, built once from Settings and handed to handlers.

Chainlit loads the handlers module by path, so handlers cannot receive arguments; they
ask `get_runtime()` for the Runtime that `create_app` installed. Tests build their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from chat_app import batch_display, training_display
from chat_app.api_limits import ApiLimits
from chat_app.chat_model import close_chat_models
from chat_app.embedding_worker import EmbeddingWorker, build_likeness
from chat_app.model_status import load_catalogue
from chat_app.settings import Settings
from core.errors import InvalidInput
from core.logging_setup import get_logger
from memory.api_tokens import ApiTokenStore
from memory.auth_sessions import AuthSessionStore
from memory.batches import BatchStore
from memory.curations import CurationStore
from memory.data_layer import AtelierDataLayer
from memory.db import create_engine, migrate, session_factory
from memory.gallery import Gallery
from memory.images import ImageStore
from memory.instances import AppInstances
from memory.ledger import Ledger
from memory.loras import LoraStore
from memory.media_store import MediaStorage
from memory.media_stores import media_store_for
from memory.schedules import ScheduleStore
from memory.users import UserStore
from memory.videos import VideoStore
from pipelines import job_runners, provider_limits
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from pipelines.scoring import clip_jobs
from pipelines.training.registry import TrainingBackendRegistry
from pipelines.video.video_registry import VideoBackendRegistry
from tools.batch_runner import BatchRunner
from tools.batch_setup import BatchSetup
from tools.context import PromptRewriter, Services
from tools.object_templates import TemplateLibrary
from tools.styles import StyleLibrary
from tools.training_jobs import TrainingJobs

if TYPE_CHECKING:
    from chat_app.scheduler import Scheduler

log = get_logger(__name__)

# The last resort for reservations no process owns (made before 0008 recorded owners):
# one still open this long after it was made was left by a process that died mid-action.
# Owned reservations are released as soon as their process is known dead (AppInstances).
STALE_RESERVATION_AGE = timedelta(hours=6)


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    media: MediaStorage
    data_layer: AtelierDataLayer
    users: UserStore
    auth_sessions: AuthSessionStore  # server-side login sessions (revocable cookies)
    auth_secret: str
    services: Services  # what every tool call shares (stores, backends, prices, trainings)
    api_tokens: ApiTokenStore  # the HTTP API's bearer tokens (hashes only)
    api_limits: ApiLimits  # the HTTP API's per-token rate, job slots and body size
    # The worker that embeds each stored image for the gallery's search by likeness
    # (`services.likeness`); None without the local extra or with the setting off.
    embeddings: EmbeddingWorker | None = None
    # This process's heartbeat, which makes its reservations its own (set by start()).
    instances: AppInstances | None = None
    # Starts each schedule's runs when they fall due (set by start()).
    scheduler: Scheduler | None = None
    _heartbeat: asyncio.Task[None] | None = field(default=None, repr=False)

    async def start(self) -> None:
        await migrate(self.engine)
        if self.embeddings is not None:
            self.embeddings.start()
        await self._ensure_first_user()
        purged = await self.auth_sessions.purge()
        if purged:
            log.info("auth_sessions_purged", count=purged)
        ledger = self.services.ledger
        if ledger is not None:
            self.instances = AppInstances(self.engine, ledger)
            await self.instances.register()
            if self.services.trainings is not None:
                # A training whose process dies while others run is marked at once.
                self.instances.sweeps.append(self.services.trainings.loras.mark_interrupted)
        await self._interrupt_dead_trainings()
        await self._fail_dead_api_jobs()
        if ledger is not None and self.instances is not None:
            # What processes that died mid-action held is given back before any turn runs,
            # and marked interrupted so each user is told; live processes keep theirs.
            await self.instances.release_dead()
            released = await ledger.release_stale(STALE_RESERVATION_AGE)
            if released:
                log.warning("stale_reservations_released", count=released)
            await self.instances.refresh_untold()
            try:
                await self._adopt_batches()
            except Exception:  # the chat still starts; the heartbeat tries again
                log.exception("batch_adoption_failed")
            self._heartbeat = asyncio.create_task(self.instances.run(), name="heartbeat")
        self._start_scheduler()
        await job_runners.start(self.settings)  # dispatcher, when jobs run on workers
        log.info(
            "started",
            database=self.engine.dialect.name,
            backends=[b.id for b in self.services.backends.available()],
            llm=self.settings.llm_model if self.settings.llm_configured else None,
        )

    async def stop(self) -> None:
        await job_runners.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        runner = self.services.batches
        if runner is not None:
            if self.instances is not None and runner.adopt in self.instances.sweeps:
                # A heartbeat must not adopt what shutdown() is about to release.
                self.instances.sweeps.remove(runner.adopt)
            # Items running go back to pending, and the batches to no process: the next
            # start-up (or a live process's heartbeat) adopts them.
            await runner.shutdown()
        if self.embeddings is not None:
            await self.embeddings.stop()  # what is still queued is left to the backfill
        if self.services.trainings is not None:
            await self.services.trainings.stop_all()  # local ones keep a checkpoint to resume from
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self.instances is not None:
            # Whatever this process still holds is released by the next start-up (or any
            # live process) at once: its owner is gone. Without the row (the database is
            # down) the heartbeat ages out instead.
            try:
                await self.instances.unregister()
            except Exception:
                log.exception("instance_unregister_failed")
        await close_chat_models()  # their HTTP sessions belong to this event loop
        # Messages Chainlit handed over but not yet committed are written, not dropped.
        await self.data_layer.flush()
        await self.engine.dispose()

    async def _adopt_batches(self) -> None:
        """Batches whose process died continue here: now, and whenever the heartbeat
        finds another process dead. Two processes never adopt the same batch."""
        runner = self.services.batches
        if runner is None or self.instances is None:
            return
        # Registered first, so a failure below is tried again by the heartbeat.
        self.instances.sweeps.append(runner.adopt)
        self.instances.sweeps.append(runner.refresh_untold)
        adopted = await runner.adopt(await self.instances.alive())
        if adopted:
            log.warning("batches_adopted", count=len(adopted))
        await runner.refresh_untold()

    def _start_scheduler(self) -> None:
        runner, schedules = self.services.batches, self.services.schedules
        if runner is None or schedules is None:
            return
        from chat_app.scheduler import Scheduler

        self.scheduler = Scheduler(
            schedules,
            runner,
            runner.store,
            self.services,
            poll_s=self.settings.schedule_poll_s,
            missed_policy=self.settings.schedule_missed,
            instance_id=runner.instance_id,
            qc_retries=self.settings.batch_qc_retries,
            error_retries=self.settings.batch_error_retries,
        )
        self.scheduler.start()

    async def _interrupt_dead_trainings(self) -> None:
        """No job runs here yet: a training the database calls running died with its
        process when that process is dead (or unknown); a live process's keep running."""
        if self.services.trainings is None:
            return
        alive = await self.instances.alive() if self.instances is not None else None
        interrupted = await self.services.trainings.loras.mark_interrupted(alive)
        if interrupted:
            log.warning("trainings_interrupted", count=interrupted)

    async def _fail_dead_api_jobs(self) -> None:
        """Jobs of the jobs API run in their process only: one that a dead process ran
        is failed, saying so (now, and on each heartbeat for processes that die later)."""
        from memory.api_jobs import ApiJobStore

        store = ApiJobStore(self.engine)
        alive = await self.instances.alive() if self.instances is not None else None
        failed = await store.mark_interrupted(alive)
        if failed:
            log.warning("api_jobs_interrupted", count=len(failed))
        if self.instances is not None:
            self.instances.sweeps.append(store.mark_interrupted)

    async def _ensure_first_user(self) -> None:
        if await self.users.count() > 0:
            return
        given = self.settings.admin_password
        password = given.get_secret_value() if given else secrets.token_urlsafe(12)
        try:
            await self.users.add("admin", password, role="admin")
        except InvalidInput:
            if await self.users.count() > 0:
                return  # another replica, starting at the same time, made it first
            raise
        log.info("admin_created", credentials_generated=given is None)
        if given is None:
            # Printed once to the operator's terminal, never logged.
            print(
                f"\n  Created user 'admin' with password: {password}\n"
                "  (shown only now; change it with `atelier users passwd admin`)\n",
                file=sys.stdout,
                flush=True,
            )


def _login_lifetime() -> timedelta:
    """How long a login lasts: Chainlit's cookie lifetime (`user_session_timeout`).

    A session row older than this is dead even if a cookie was re-issued (`/auth/jwt`).
    """
    from chainlit.config import config

    return timedelta(seconds=config.project.user_session_timeout)


def build_runtime(settings: Settings, auth_secret: str) -> Runtime:
    engine = create_engine(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    media = media_store_for(settings)
    provider_limits.configure(settings.provider_concurrency)
    backends = BackendRegistry.from_settings(settings, load_catalogue(settings))
    images = ImageStore(engine, media)
    likeness, embeddings = build_likeness(settings, engine, media)
    clip_remote = clip_jobs.remote_clip(settings)  # None: CLIP runs in this process
    if embeddings is not None:
        images.on_recorded = embeddings.enqueue
    runtime = Runtime(
        settings=settings,
        engine=engine,
        media=media,
        data_layer=AtelierDataLayer(engine, media, auth_secret),
        users=UserStore(session_factory(engine)),
        auth_sessions=AuthSessionStore(session_factory(engine), _login_lifetime()),
        auth_secret=auth_secret,
        api_tokens=ApiTokenStore(session_factory(engine)),
        api_limits=ApiLimits.from_settings(settings),
        embeddings=embeddings,
        services=Services(
            backends=backends,
            images=images,
            gallery=Gallery(engine),
            likeness=likeness,
            styles=StyleLibrary.load(settings.styles_file),
            rewrite=_prompt_rewriter(settings),
            curations=CurationStore(engine),
            clip_model=settings.clip_model if settings.clip_enabled else None,
            clip_remote=clip_remote,  # set: CLIP runs on workers (ATELIER_BROKER_URL)
            prices=PriceTable.load(
                settings.prices_file, local_usd_per_gpu_second=settings.local_usd_per_gpu_second
            ),
            ledger=Ledger(engine),
            operator_limits=settings.operator_limits,
            videos=VideoStore(engine, media),
            video_backends=VideoBackendRegistry.from_settings(settings, backends),
            trainings=TrainingJobs(
                LoraStore(engine),
                settings.resolved_lora_dir,
                backends=TrainingBackendRegistry.from_settings(settings, backends),
                watcher_factory=training_display.watch,
            ),
            schedules=ScheduleStore(engine),
        ),
    )
    _add_batches(runtime)
    return runtime


def _add_batches(runtime: Runtime) -> None:
    """The batch runner (it runs tool work, so it takes the finished Services) and what
    starting a batch needs; a bad templates file stops start-up naming the file."""
    settings = runtime.settings
    store = BatchStore(runtime.engine)
    runner = BatchRunner(
        runtime.services,
        store,
        instance_id=lambda: runtime.instances.id if runtime.instances is not None else None,
        qc_retries=settings.batch_qc_retries,
        error_retries=settings.batch_error_retries,
        media=runtime.media,
    )
    setup = BatchSetup(
        templates=TemplateLibrary.load(settings.templates_file),
        max_items=settings.batch_max_items,
        display=batch_display.factory(store),
    )
    runtime.services = replace(runtime.services, batches=runner, batch_setup=setup)
    runner.services = runtime.services


def _prompt_rewriter(settings: Settings) -> PromptRewriter | None:
    """refine_prompt's chat call (`agent.prompt_rewriter`); None in command mode.

    The agent module (langchain's messages, every tool) is imported by the first
    rewrite, not at start-up.
    """
    if not settings.llm_configured:
        return None

    async def rewrite(instructions: str, prompt: str) -> str:
        from chat_app.agent import prompt_rewriter

        rewriter = prompt_rewriter(settings)
        assert rewriter is not None  # the chat model is configured (above)
        return await rewriter(instructions, prompt)

    return rewrite


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def get_runtime() -> Runtime:
    if _current is None:
        raise RuntimeError("No runtime installed: start the app with `atelier run`.")
    return _current
