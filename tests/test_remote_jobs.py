"""Local GPU jobs on real `atelier worker` processes, through Celery on the Redis here.

Two CPU workers (subprocesses, tests/worker_fixtures.py) run the tiny random-weight SD
from tests/tiny_models.py; the app side is the real local backend with a
`CeleryJobRunner` and a dispatcher loop on a board under a unique key prefix. What is
checked is what a user would see: the same image bytes as in this process for the same
seed, the job landing on the worker that has its model, a light user's job not stuck
behind a heavy user's queue, stops that stop, a killed worker's job finished by the
other one, a killed app process's job stopped rather than run for nobody, and a training
carried on from its checkpoint by another worker.

Tests without workers (the job codec, the CLI refusals, start-up without torch) are fast;
the rest share one pool of two workers per module and are marked slow.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog
from PIL import Image

from core.errors import InvalidInput
from pipelines import job_runners
from pipelines.devices import DevicePlan
from pipelines.images.base import ImageRequest, LoraSpec
from pipelines.images.local_diffusers import LocalDiffusers, RenderSpec, render
from pipelines.images.pipeline_cache import PipelineCache
from pipelines.job_queue import JobQueue
from pipelines.progress import Progress, ProgressUpdate
from pipelines.remote import job_codec
from pipelines.remote.celery_runner import WorkerRun, last_run
from pipelines.remote.job_board import WAITER_GONE
from tests import test_local_backend as local_tests
from tests.worker_fixtures import REPO, WorkerPool

WORKERS = ("w1", "w2")


def request(**overrides: object) -> ImageRequest:
    return local_tests.request(**overrides)


def spec(**overrides: object) -> RenderSpec:
    fields: dict[str, object] = {
        "model": "m",
        "task": "text2img",
        "prompt": "a cat",
        "negative_prompt": None,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance": 7.5,
        "strength": None,
        "scheduler": None,
        "seeds": (1,),
        "loras": (),
        "lora_dir": None,
        "plan": DevicePlan("auto", "auto"),
    }
    return RenderSpec(**{**fields, **overrides})  # type: ignore[arg-type]


# --- Without workers ---------------------------------------------------------------------


def test_a_job_crosses_with_the_workers_own_cache_and_plan() -> None:
    app_cache, worker_cache = PipelineCache(), PipelineCache()
    blob = job_codec.dumps_job(functools.partial(render, spec(), app_cache), watched=True)
    worker_plan = DevicePlan("cuda:1", "bfloat16")

    fn, watched = job_codec.loads_job(blob, {"image": worker_cache}.__getitem__, worker_plan)

    assert fn.func is render and watched
    assert fn.args[0] == replace(spec(), plan=worker_plan)
    assert fn.args[1] is worker_cache
    assert job_codec.job_kind(fn) == "image"
    assert job_codec.job_model(functools.partial(render, spec(source="/m/x"))) == "/m/x"


def test_bytes_naming_any_other_callable_are_refused() -> None:
    evil = pickle.dumps({"func": os.system, "args": ("true",), "keywords": {}})
    with pytest.raises(pickle.UnpicklingError, match="may not be loaded"):
        job_codec.loads_job(evil, lambda kind: PipelineCache(), DevicePlan("cpu", "float32"))
    with pytest.raises(ValueError, match="not a job a worker runs"):
        job_codec.dumps_job(functools.partial(print, "x"))


def test_without_a_broker_each_backend_keeps_an_in_process_queue() -> None:
    settings = SimpleNamespace(broker_url=None)
    assert isinstance(job_runners.runner_for(settings), JobQueue)
    assert job_runners.runner_for(settings) is not job_runners.runner_for(settings)
    assert job_runners.remote_board() is None


async def test_the_runtime_starts_and_stops_one_dispatcher_per_process() -> None:
    pool = WorkerPool(Path("/nonexistent"))  # no workers: only its prefix and settings
    settings = pool.settings()
    try:
        await job_runners.start(settings)
        board = job_runners.remote_board()
        assert board is not None and job_runners.runner_for(settings).board is board
        await job_runners.start(settings)  # a second start changes nothing
        job_id = await board.enqueue(owner="u", kind="image", model="m", payload=b"x")
        assert (await board.status(job_id)).state == "queued"  # no worker: it waits
        assert (await board.cancel(job_id)) == "cancelled"
    finally:
        await job_runners.reset()
        pool.stop()
    assert job_runners.remote_board() is None


def test_the_app_with_a_broker_builds_local_backends_without_importing_torch(
    tmp_path: Path,
) -> None:
    script = """
import asyncio, sys
from chat_app.settings import Settings
from pipelines import job_runners
from pipelines.images.local_diffusers import create_backend
from pipelines.training.lora_training import LocalLoraTrainer
from pipelines.video.local_video import create_video_backend

class Registry:
    def available(self):
        return [images]

settings = Settings()
images = create_backend(settings)
video = create_video_backend(settings, Registry())
plan = asyncio.run(images._device_plan())
assert images.runner is video.runner is job_runners.runner_for(settings)
assert LocalLoraTrainer.beside(images).runner is images.runner
print(type(images.runner).__name__, plan.device, "torch" in sys.modules)
"""
    env = {
        **os.environ,
        "ATELIER_BROKER_URL": "redis://127.0.0.1:6379/0",
        "ATELIER_DATA_DIR": str(tmp_path),
        "ATELIER_LOCAL_DEVICE": "cuda:0",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CeleryJobRunner", "cuda:0", "False"]


def test_the_worker_command_refuses_without_a_broker_or_redis(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    base["ATELIER_DATA_DIR"] = str(tmp_path)
    command = [sys.executable, "-m", "chat_app.cli", "worker", "--device", "cpu"]

    unset = subprocess.run(command, cwd=REPO, env=base, capture_output=True, text=True)
    away = subprocess.run(
        command,
        cwd=REPO,
        env={**base, "ATELIER_BROKER_URL": "redis://:hunter2@127.0.0.1:1/0"},
        capture_output=True,
        text=True,
    )
    bad_queue = subprocess.run(
        [*command, "--queues", "image,audio"], cwd=REPO, env=base, capture_output=True, text=True
    )

    assert unset.returncode == 2 and "ATELIER_BROKER_URL is not set" in unset.stderr
    assert away.returncode == 2 and "cannot be reached" in away.stderr
    assert "hunter2" not in away.stderr
    assert bad_queue.returncode == 2 and "--queues takes" in bad_queue.stderr


# --- With two workers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerPool]:
    workers = WorkerPool(tmp_path_factory.mktemp("workers"))
    try:
        for name in WORKERS:
            workers.start(name)
        yield workers
    finally:
        workers.stop()


@pytest.fixture
async def runner(pool: WorkerPool) -> AsyncIterator[object]:
    for name in WORKERS:  # a test that killed one gets it back
        if name not in pool.processes:
            pool.start(name)
    await asyncio.to_thread(pool.wait_ready)
    async with pool.dispatching(pool.runner()) as remote:
        yield remote


@pytest.fixture
def remote(
    runner: object, tiny_sd_dir: Path, tiny_lora_dir: Path, tmp_path: Path
) -> LocalDiffusers:
    return LocalDiffusers(
        model=str(tiny_sd_dir),
        device="cpu",
        lora_dir=tiny_lora_dir,
        runner=runner,  # type: ignore[arg-type]
        models_dir=tmp_path,
    )


@pytest.fixture
def in_process(tiny_sd_dir: Path, tiny_lora_dir: Path, tmp_path: Path) -> Iterator[LocalDiffusers]:
    local = LocalDiffusers(
        model=str(tiny_sd_dir), device="cpu", lora_dir=tiny_lora_dir, models_dir=tmp_path
    )
    yield local
    local.runner.shutdown()  # type: ignore[attr-defined]


async def as_user(user: str, coroutine: object) -> object:
    structlog.contextvars.bind_contextvars(user_id=user)
    return await coroutine  # type: ignore[misc]


@pytest.mark.slow
async def test_workers_make_the_same_images_as_this_process(
    remote: LocalDiffusers, in_process: LocalDiffusers
) -> None:
    there = await remote.generate(request(seed=11, n=2))
    mine = await in_process.generate(request(seed=11, n=2))

    assert [i.data for i in there.images] == [i.data for i in mine.images]
    assert last_run() is not None and last_run().worker in WORKERS  # type: ignore[union-attr]
    # The local backend's own tests pass through the workers too.
    await local_tests.test_text_to_image_records_what_it_did(remote)
    await local_tests.test_same_seed_same_bytes_other_seed_other_image(remote)
    await local_tests.test_image_to_image_uses_the_input(remote)
    await local_tests.test_schedulers_are_swapped_per_request(remote)


@pytest.mark.slow
async def test_progress_and_previews_reach_the_app(remote: LocalDiffusers) -> None:
    updates: list[ProgressUpdate] = []

    async def listen(update: ProgressUpdate) -> None:
        updates.append(update)

    progress = Progress(listen)
    await remote.generate(request(steps=40), progress)

    denoising = [u for u in progress.history if u.note == "denoising"]
    assert denoising and denoising[-1].done == 40 and denoising[-1].total == 40
    assert progress.previews  # latents shown while someone watched
    Image.open(io.BytesIO(progress.previews[0].data)).verify()


@pytest.mark.slow
async def test_a_worker_error_comes_back_as_the_same_error(
    runner: object, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "broken.safetensors").write_bytes(b"not a safetensors file")
    backend = LocalDiffusers(
        model=str(tiny_sd_dir),
        device="cpu",
        lora_dir=loras,
        runner=runner,  # type: ignore[arg-type]
        models_dir=tmp_path,
    )
    with pytest.raises(InvalidInput, match="could not be applied"):
        await backend.generate(request(loras=(LoraSpec("broken", 1.0),)))
    assert (await backend.generate(request())).images  # the worker carries on


@pytest.mark.slow
async def test_a_job_goes_to_the_worker_that_has_its_model(
    remote: LocalDiffusers, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    models = []
    for name in ("model-a", "model-b"):
        (tmp_path / name).symlink_to(tiny_sd_dir, target_is_directory=True)
        models.append(str(tmp_path / name))
    board = remote.runner.board  # type: ignore[attr-defined]

    async def run_on(model: str) -> str:
        await remote.generate(request(model=model))
        worker = last_run().worker  # type: ignore[union-attr]
        while True:  # until the next heartbeat says it is loaded
            workers = {w.name: w for w in await board.live_workers()}
            if model in workers[worker].loaded_models:
                return worker
            await asyncio.sleep(0.1)

    first = {model: await run_on(model) for model in models}
    for model in models * 2:
        assert await run_on(model) == first[model]


@pytest.mark.slow
async def test_a_light_user_is_not_stuck_behind_a_heavy_one(remote: LocalDiffusers) -> None:
    board = remote.runner.board  # type: ignore[attr-defined]
    await remote.generate(request())  # loaded somewhere: the runs below are alike
    finished: list[str] = []

    async def job(user: str, index: int) -> None:
        await as_user(user, remote.generate(request(steps=3, seed=index)))
        finished.append(f"{user}{index}")

    heavy = [asyncio.create_task(job("heavy", i)) for i in range(6)]
    while True:  # all six on the board before the light user asks
        snapshot = await board.snapshot()
        if snapshot.queued_by_owner.get("heavy", 0) + snapshot.running >= 6:
            break
        await asyncio.sleep(0.05)
    light = asyncio.create_task(job("light", 0))
    await asyncio.gather(*heavy, light)

    # First come first served would finish it last (7th); taking turns, it is among the
    # next two started once a worker frees up.
    assert finished.index("light0") <= 4, finished


@pytest.mark.slow
async def test_stopping_a_waiting_and_a_running_job(remote: LocalDiffusers) -> None:
    started = [local_tests.progress_reaching(lambda u: u.done >= 1) for _ in WORKERS]
    long_jobs = [
        asyncio.create_task(remote.generate(request(steps=150, n=4, seed=i), progress))
        for i, progress in enumerate(started)
    ]
    for progress in started:
        await asyncio.wait_for(progress.reached.wait(), 60)
    waiting_progress = local_tests.progress_reaching(lambda u: u.note.startswith("waiting"))
    waiting = asyncio.create_task(remote.generate(request(), waiting_progress))
    await asyncio.wait_for(waiting_progress.reached.wait(), 30)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert all(u.total == 0 for u in waiting_progress.history)  # it never ran

    long_jobs[0].cancel()  # the task awaiting it is cancelled
    started[1].cancel()  # the user pressed stop
    for task in long_jobs:
        with pytest.raises(asyncio.CancelledError):
            await task
    for progress in started:
        assert max(u.done for u in progress.history) < 600  # stopped, not finished
    assert (await remote.generate(request())).images  # both workers are free again


@pytest.mark.slow
async def test_a_clip_made_by_a_worker_is_the_clip_made_here(
    runner: object, tiny_svd_dir: Path, tmp_path: Path
) -> None:
    from pipelines.video.local_video import LocalStableVideo
    from tests import test_local_video as video_tests

    def backend(runner: object = None) -> LocalStableVideo:
        return LocalStableVideo(
            model=str(tiny_svd_dir),
            device="cpu",
            runner=runner,  # type: ignore[arg-type]
            decode_chunk_size=2,
            models_dir=tiny_svd_dir.parent.parent,
        )

    remote, here = backend(runner), backend()
    there = await remote.generate(video_tests.request(seed=11))
    mine = await here.generate(video_tests.request(seed=11))
    here.runner.shutdown()  # type: ignore[attr-defined]

    assert there.parameters == mine.parameters  # the worker's device and dtype included
    decoded = [video_tests.decoded(r.video.data, tmp_path)[1] for r in (there, mine)]
    assert decoded[0] == decoded[1]
    await video_tests.test_same_seed_same_clip_other_seed_or_image_another(remote, tmp_path)


async def generate_where(
    backend: LocalDiffusers, asked: ImageRequest, progress: Progress
) -> tuple[object, WorkerRun | None]:
    """The result and where it ran (read in the task that awaited it)."""
    result = await backend.generate(asked, progress)
    return result, last_run()


async def busy_worker(board: object) -> str:
    while True:
        busy = [w.name for w in await board.live_workers() if w.busy_job]  # type: ignore[attr-defined]
        if busy:
            return busy[0]
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_killed_workers_job_is_finished_by_the_other_once(
    pool: WorkerPool, remote: LocalDiffusers, in_process: LocalDiffusers
) -> None:
    await remote.generate(request())  # loaded: the big job starts stepping at once
    progress = local_tests.progress_reaching(lambda u: u.done >= 2)
    job = asyncio.create_task(generate_where(remote, request(steps=60, seed=5), progress))
    await asyncio.wait_for(progress.reached.wait(), 60)
    victim = await busy_worker(remote.runner.board)  # type: ignore[attr-defined]
    pool.kill(victim)

    result, ran = await job

    assert ran is not None and ran.worker != victim
    assert any("retrying" in u.note for u in progress.history)
    mine = await in_process.generate(request(steps=60, seed=5))
    assert [i.data for i in result.images] == [i.data for i in mine.images]


# An app process (a replica) that awaits one long job; its waiter lease lasts 1 s.
DYING_REPLICA = """
import asyncio, os, sys
from types import SimpleNamespace
import structlog
from pipelines.images.base import ImageRequest
from pipelines.images.local_diffusers import LocalDiffusers
from pipelines.job_runners import build_remote

url = os.environ["ATELIER_BROKER_URL"]
runner = build_remote(SimpleNamespace(
    broker_url=url, broker_prefix=os.environ["ATELIER_BROKER_PREFIX"], redis_url=url))
runner.board.lease_s = 1.0
structlog.contextvars.bind_contextvars(user_id="doomed")
backend = LocalDiffusers(model=sys.argv[1], device="cpu", runner=runner, models_dir=sys.argv[2])
asyncio.run(backend.generate(ImageRequest(prompt="a cat", size="64x64", steps=150, n=4)))
"""


async def job_of(board: object, owner: str, process: asyncio.subprocess.Process) -> tuple[str, str]:
    """(worker, job id) once a job of `owner` runs on a worker (None: `process` ended)."""
    while process.returncode is None:
        for worker in await board.live_workers():  # type: ignore[attr-defined]
            if worker.busy_job:
                status = await board.status(worker.busy_job)  # type: ignore[attr-defined]
                if status is not None and status.owner == owner and status.state == "running":
                    return worker.name, worker.busy_job
        await asyncio.sleep(0.05)
    raise AssertionError(f"the process awaiting {owner}'s job exited ({process.returncode})")


async def seconds_running(board: object, job_id: str) -> float:
    redis = board.redis  # type: ignore[attr-defined]
    started = await redis.hget(board.keys.job(job_id), "started_at")  # type: ignore[attr-defined]
    now_s, now_us = await redis.time()
    return now_s + now_us / 1e6 - float(started)


@pytest.mark.slow
async def test_a_killed_app_process_s_job_is_stopped_and_its_worker_freed(
    pool: WorkerPool, runner: object, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    board = runner.board  # type: ignore[attr-defined]
    log_path = tmp_path / "replica.log"
    with open(log_path, "wb") as log:
        replica = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", DYING_REPLICA, str(tiny_sd_dir), str(tmp_path)),
            cwd=REPO,
            env={**os.environ, **pool.env},
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        try:
            worker, job_id = await asyncio.wait_for(job_of(board, "doomed", replica), 60)
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(f"{exc!r}; the replica's log:\n{log_path.read_text()}") from None
        # While the replica lives it renews the lease: the job outlives three leases.
        while await seconds_running(board, job_id) < 3.0:
            assert (await board.status(job_id)).state == "running", log_path.read_text()
            await asyncio.sleep(0.1)
        assert await board.redis.hget(board.keys.job(job_id), "cancel") != b"1"
        replica.send_signal(signal.SIGKILL)
        await asyncio.wait_for(replica.wait(), 10)
        killed = time.monotonic()

        async def stop_asked() -> float:
            while True:
                if await board.redis.hget(board.keys.job(job_id), "cancel") == b"1":
                    return time.monotonic() - killed
                await asyncio.sleep(0.05)

        async def worker_free() -> float:
            while True:
                busy = {w.name: w.busy_job for w in await board.live_workers()}
                if busy.get(worker) is None and (await board.status(job_id)).state != "running":
                    return time.monotonic() - killed
                await asyncio.sleep(0.05)

        # The lease lapses after 1 s; this process's dispatcher then asks the job to stop
        # (its pass runs every 0.2 s here), and the worker stops at its next step.
        asked = await asyncio.wait_for(stop_asked(), 15)
        freed = await asyncio.wait_for(worker_free(), 15)
        assert asked < 2.5 and freed - asked < 3.0, (asked, freed)
        state, _result, _error, message = await board.result(job_id)
        assert (state, message) == ("cancelled", WAITER_GONE)
        assert worker in pool.processes and pool.processes[worker].poll() is None
    finally:
        if replica.returncode is None:
            replica.kill()
            await asyncio.wait_for(replica.wait(), 10)


@pytest.mark.slow
async def test_a_training_carries_on_from_its_checkpoint_on_another_worker(
    pool: WorkerPool, runner: object, trained_lora: object, tmp_path: Path
) -> None:
    import torch

    from pipelines.training.lora_formats import load_lora
    from pipelines.training.lora_training import (
        LocalLoraTrainer,
        LocalTrainingRequest,
        TrainingProgress,
    )
    from tests.lora_fixtures import prepare, training_params

    lora_dir = tmp_path / "shared-loras"  # the folder every worker and the app share
    trainer = LocalLoraTrainer(runner, "cpu", lora_dir)  # type: ignore[arg-type]
    dataset = prepare(lora_dir, "moved")
    # Checkpoints every 5 steps (no effect on the maths) so the kill lands between two.
    params = training_params(checkpoint_every=5)
    base = trained_lora.base_model  # type: ignore[attr-defined]
    progress = TrainingProgress()
    job = asyncio.create_task(
        trainer.train(LocalTrainingRequest("moved", base, dataset, params), progress)
    )
    while True:  # some steps done, the first checkpoints written
        if [step for step, _ in progress.losses if step >= 8]:
            break
        await asyncio.sleep(0.02)
    pool.kill(await busy_worker(runner.board))  # type: ignore[attr-defined]

    result = await job

    assert result.resumed_from is not None and 5 <= result.resumed_from < 60
    theirs = trained_lora.result  # type: ignore[attr-defined]
    assert result.losses == theirs.losses
    mine, reference = load_lora(result.lora_file)[0], load_lora(theirs.lora_file)[0]
    assert mine.keys() == reference.keys()
    assert all(torch.equal(mine[key], reference[key]) for key in reference)
