"""The local diffusers backend, run for real on a tiny random-weight pipeline from disk.

Everything goes through `LocalDiffusers.generate` with the pipeline loaded by
`from_pretrained(folder)`, as users' models are; only the weights are random and the
images 64x64. The job queue is tested on its own with plain blocking functions.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.images.base import ImageRequest, InputImage, LoraSpec
from pipelines.images.local_diffusers import LocalDiffusers, create_backend, defaults_for
from pipelines.job_queue import JobCancelled, JobQueue
from pipelines.progress import Progress, ProgressUpdate
from tests.tiny_fixtures import LORA_NAME

REPO = Path(__file__).resolve().parents[1]
SIZE = "64x64"


def image(color: object, size: tuple[int, int] = (64, 64), mode: str = "RGB") -> InputImage:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return InputImage(buffer.getvalue(), "image/png", *size)


def centre_mask(mode: str = "L", size: tuple[int, int] = (64, 64)) -> InputImage:
    """The centre square marked for repainting, drawn in either mask convention."""
    if mode == "L":
        mask = Image.new("L", size, 0)
        mask.paste(255, (16, 16, 48, 48))
    else:  # OpenAI style: opaque keeps, transparent repaints
        mask = Image.new("RGBA", size, (0, 0, 0, 255))
        mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return InputImage(buffer.getvalue(), "image/png", *size)


@pytest.fixture
def backend(tiny_sd_dir: Path, tiny_lora_dir: Path, tmp_path: Path) -> Iterator[LocalDiffusers]:
    # The test's own folder is the operator's models folder: paths inside it may be named.
    local = LocalDiffusers(
        model=str(tiny_sd_dir), device="cpu", lora_dir=tiny_lora_dir, models_dir=tmp_path
    )
    yield local
    local.runner.shutdown()  # type: ignore[attr-defined]


def request(**overrides: object) -> ImageRequest:
    fields: dict[str, object] = {"prompt": "a red cat", "size": SIZE, "steps": 2, "seed": 7}
    return ImageRequest(**{**fields, **overrides})  # type: ignore[arg-type]


# --- Generating --------------------------------------------------------------------------


async def test_text_to_image_records_what_it_did(backend: LocalDiffusers) -> None:
    result = await backend.generate(request())

    [made] = result.images
    assert (made.mime, made.width, made.height, made.seed) == ("image/png", 64, 64, 7)
    assert Image.open(io.BytesIO(made.data)).size == (64, 64)
    assert result.seed_honoured and result.backend == "local"
    params = result.parameters
    assert params["task"] == "text2img"
    assert (params["device"], params["dtype"]) == ("cpu", "float32")
    assert (params["steps"], params["guidance"], params["seeds"]) == (2, 7.5, [7])
    assert params["model_defaults"] == {"family": "sd", "applied": {"guidance": 7.5}}


async def test_model_defaults_follow_the_model_name(
    backend: LocalDiffusers, tiny_sd_dir: Path, tmp_path: Path
) -> None:
    turbo = tmp_path / "tiny-sd-turbo"  # the same weights, named like SD-Turbo
    turbo.symlink_to(tiny_sd_dir, target_is_directory=True)
    result = await backend.generate(request(model=str(turbo), steps=None))

    assert result.parameters["model_defaults"] == {
        "family": "turbo",
        "applied": {"steps": 1, "guidance": 0.0},
    }
    assert backend.capabilities(str(turbo)).max_steps == 4
    assert backend.capabilities("stabilityai/stable-diffusion-xl-base-1.0").sizes[0] == "1024x1024"
    assert backend.capabilities("stable-diffusion-v1-5").sizes[0] == "512x512"


async def test_same_seed_same_bytes_other_seed_other_image(backend: LocalDiffusers) -> None:
    first = await backend.generate(request(seed=11, n=2))
    again = await backend.generate(request(seed=11, n=2))
    second_alone = await backend.generate(request(seed=12))
    unseeded = await backend.generate(request(seed=None))

    assert [i.data for i in first.images] == [i.data for i in again.images]
    assert first.images[0].data != first.images[1].data
    assert [i.seed for i in first.images] == [11, 12]
    assert first.images[1].data == second_alone.images[0].data  # image i depends on seed+i only
    assert isinstance(unseeded.images[0].seed, int)
    assert unseeded.parameters["seeds"] == [unseeded.images[0].seed]


async def test_image_to_image_uses_the_input(backend: LocalDiffusers) -> None:
    red = await backend.generate(request(images=(image((220, 20, 20)),)))
    blue = await backend.generate(request(images=(image((20, 20, 220)),)))
    stronger = await backend.generate(request(images=(image((220, 20, 20)),), strength=1.0))

    assert red.parameters["task"] == "img2img"
    assert red.parameters["model_defaults"]["applied"] == {"guidance": 7.5, "strength": 0.6}
    assert red.images[0].data != blue.images[0].data
    assert red.images[0].data != stronger.images[0].data
    assert stronger.parameters["strength"] == 1.0


async def test_inpainting_reads_both_mask_conventions(backend: LocalDiffusers) -> None:
    source = (image((30, 160, 30)),)
    white = await backend.generate(request(images=source, mask=centre_mask("L")))
    transparent = await backend.generate(request(images=source, mask=centre_mask("RGBA")))
    everything = await backend.generate(request(images=source, mask=image(255, mode="L")))

    assert white.parameters["task"] == "inpaint" and white.parameters["mask"] is True
    assert white.images[0].data == transparent.images[0].data
    assert white.images[0].data != everything.images[0].data


def test_input_without_size_is_redrawn_at_the_models_native_area() -> None:
    from pipelines.images.local_diffusers import _size_for_input

    photo = InputImage(b"", "image/jpeg", 4000, 3000)
    assert _size_for_input(photo, "stable-diffusion-v1-5") == "592x440"
    assert _size_for_input(photo, "stabilityai/sdxl-base-1.0") == "1184x888"
    assert defaults_for("stabilityai/sd-turbo").steps == 1


async def test_lora_changes_the_image_and_leaves_the_cache_clean(
    backend: LocalDiffusers,
) -> None:
    plain = await backend.generate(request())
    styled = await backend.generate(request(loras=(LoraSpec(LORA_NAME, 1.0),)))
    zero = await backend.generate(request(loras=(LoraSpec(LORA_NAME, 0.0),)))
    after = await backend.generate(request())

    assert styled.images[0].data != plain.images[0].data
    assert zero.images[0].data == plain.images[0].data
    assert after.images[0].data == plain.images[0].data
    assert styled.parameters["loras"] == [{"name": LORA_NAME, "weight": 1.0}]
    unet = backend.cache.get(backend.default_model, backend._plan).unet  # type: ignore[arg-type]
    assert not getattr(unet, "peft_config", None)
    assert not [name for name, _ in unet.named_modules() if "lora" in name.lower()]


async def test_schedulers_are_swapped_per_request(backend: LocalDiffusers) -> None:
    plain = await backend.generate(request())
    euler = await backend.generate(request(scheduler="euler_a"))
    after = await backend.generate(request())

    assert euler.parameters["scheduler"] == "euler_a"
    assert euler.images[0].data != plain.images[0].data
    assert after.images[0].data == plain.images[0].data


# --- Progress, cache, cancellation -------------------------------------------------------


class WatchedProgress(Progress):
    reached: asyncio.Event


def progress_reaching(condition: Callable[[ProgressUpdate], bool]) -> WatchedProgress:
    """A Progress whose `reached` event is set once an update meets `condition`."""
    reached = asyncio.Event()

    async def watch(update: ProgressUpdate) -> None:
        if condition(update):
            reached.set()

    progress = WatchedProgress(watch)
    progress.reached = reached
    return progress


async def test_progress_reports_each_step(backend: LocalDiffusers) -> None:
    progress = Progress()
    await backend.generate(request(steps=4), progress)

    steps = [(u.done, u.total) for u in progress.history if u.note == "denoising"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert progress.history[0].note.startswith("loading ")


async def test_second_request_reuses_the_loaded_pipeline(backend: LocalDiffusers) -> None:
    await backend.generate(request())
    plan = backend._plan
    assert plan is not None
    text2img = backend.cache.get(backend.default_model, plan)
    await backend.generate(request(seed=8))
    await backend.generate(request(images=(image((1, 2, 3)),)))

    assert backend.cache.loads == 1
    assert backend.cache.get(backend.default_model, plan) is text2img
    img2img = backend.cache.get(backend.default_model, plan, "img2img")
    assert img2img.unet is text2img.unet and img2img.vae is text2img.vae


async def test_least_recently_used_model_is_dropped(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from pipelines.images.pipeline_cache import PipelineCache

    other = shutil.copytree(tiny_sd_dir, tmp_path / "other-sd")
    local = LocalDiffusers(
        model=str(tiny_sd_dir), device="cpu", cache=PipelineCache(1), models_dir=tmp_path
    )
    for model in (str(tiny_sd_dir), str(other), str(tiny_sd_dir)):
        await local.generate(request(model=model))
    assert local.cache.loads == 3


async def test_cancelling_the_task_stops_within_a_few_steps(backend: LocalDiffusers) -> None:
    await backend.generate(request())  # loaded, so steps start at once
    progress = progress_reaching(lambda update: update.done >= 2)
    task = asyncio.create_task(backend.generate(request(steps=60), progress))
    await asyncio.wait_for(progress.reached.wait(), 30)
    cancelled_at = progress.latest.done
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert progress.cancelled
    assert max(u.done for u in progress.history) <= cancelled_at + 3
    again = await backend.generate(request())  # the pipeline is not left interrupted
    assert again.images


async def test_user_stop_through_progress_raises_cancelled(backend: LocalDiffusers) -> None:
    progress = progress_reaching(lambda update: update.note == "denoising")
    task = asyncio.create_task(backend.generate(request(steps=60), progress))
    await asyncio.wait_for(progress.reached.wait(), 30)
    progress.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert max(u.done for u in progress.history) < 10


async def test_event_loop_keeps_ticking_during_generation(backend: LocalDiffusers) -> None:
    await backend.generate(request())
    ticks = 0
    job = asyncio.create_task(backend.generate(request(steps=8)))
    while not job.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await job
    assert ticks >= 5


# --- Refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"size": "100x100"}, "Valid sizes: 512x512, 768x768"),
        ({"n": 5}, "1 to 4 images per request; 5 was asked"),
        ({"scheduler": "warp"}, "no scheduler 'warp'. Known: euler, euler_a, dpm++"),
        ({"loras": (LoraSpec("nope"),)}, r"^There is no LoRA named 'nope'\. `/loras` lists"),
        ({"loras": (LoraSpec("../tiny-style"),)}, "not a LoRA name"),
        ({"loras": (LoraSpec("a/b"),)}, "not a LoRA name"),
        ({"strength": 0.5}, "strength applies only when editing"),
        ({"images": (image(0),), "steps": 1}, r"strength 0.6, 1 step\(s\) change nothing"),
        (
            {"images": (image(0),), "mask": image(0, size=(32, 32), mode="L")},
            "mask is 32x32 but the image is 64x64",
        ),
    ],
)
async def test_bad_requests_are_refused_with_what_would_work(
    backend: LocalDiffusers, overrides: dict, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await backend.generate(request(**overrides))
    assert backend.cache.loads == 0  # refused before loading anything


async def test_negative_prompt_without_guidance_is_refused(tiny_sd_dir: Path) -> None:
    turbo = LocalDiffusers(model="stabilityai/sd-turbo", device="cpu")
    with pytest.raises(InvalidInput, match="no effect with guidance 0"):
        await turbo.generate(ImageRequest("a cat", negative_prompt="blurry", steps=2))
    with pytest.raises(InvalidInput, match="Steps must be from 1 to 4"):
        await turbo.generate(ImageRequest("a cat", steps=20))


async def test_unknown_model_folder_is_named(backend: LocalDiffusers, tmp_path: Path) -> None:
    """Inside the operator's models folder: named by its last part, never the full path."""
    missing = tmp_path / "no-such-model"
    with pytest.raises(InvalidInput, match=f"'{missing.name}' does not exist.*model_index.json"):
        await backend.generate(request(model=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="folder 'empty' has no model_index.json") as info:
        await backend.generate(request(model=str(tmp_path / "empty")))
    assert str(tmp_path) not in info.value.message


async def test_hub_id_that_cannot_be_fetched_says_what_to_check(
    backend: LocalDiffusers, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast
    with pytest.raises(InvalidInput, match="Could not download.*HF_TOKEN for gated models"):
        await backend.generate(request(model="atelier-tests/no-such-model"))


# --- Wiring --------------------------------------------------------------------------------


def test_importing_the_backend_does_not_import_torch() -> None:
    code = (
        "import pipelines.images.registry, pipelines.images.local_diffusers, pipelines.job_queue, "
        "pipelines.images.pipeline_cache, pipelines.devices, sys; "
        "heavy = {'torch', 'diffusers', 'transformers', 'peft'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_create_backend_only_when_enabled_and_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chat_app.settings import load_settings

    settings = load_settings(data_dir=tmp_path, local_enabled=True, local_model="my/model")
    backend = create_backend(settings)
    if backend is None:
        pytest.skip("the local extra is not installed")
    assert backend.default_model == "my/model"
    assert backend.lora_dir == (tmp_path / "loras").resolve()
    assert create_backend(load_settings(data_dir=tmp_path, local_enabled=False)) is None
    monkeypatch.setattr(
        "pipelines.images.local_diffusers._installed", lambda name: name != "diffusers"
    )
    assert create_backend(settings) is None


def test_device_and_dtype_choice(tiny_sd_dir: Path) -> None:
    import torch

    from core.errors import ConfigError
    from pipelines import devices

    assert devices.pick_dtype("cpu") == "float32" and devices.pick_dtype("mps") == "float16"
    first, again = devices.seeded_generators([5, 5])
    assert torch.equal(torch.randn(4, generator=first), torch.randn(4, generator=again))
    if not torch.cuda.is_available():
        assert devices.plan("auto").device in ("cpu", "mps")
        with pytest.raises(ConfigError, match="ATELIER_LOCAL_DEVICE is cuda:1 but torch finds no"):
            devices.resolve_device("cuda:1")


# --- The job queue -------------------------------------------------------------------------


async def test_one_job_at_a_time_per_device_in_arrival_order() -> None:
    queue = JobQueue()
    running: dict[str, int] = {"cpu": 0, "cuda": 0}
    most = dict(running)
    order: list[str] = []
    lock = threading.Lock()

    def job(device: str, name: str):
        def run(progress: Progress) -> str:
            with lock:
                running[device] += 1
                most[device] = max(most[device], running[device])
                order.append(name)
            time.sleep(0.05)
            with lock:
                running[device] -= 1
            return name

        return run

    progresses = [Progress() for _ in range(4)]
    names = await asyncio.gather(
        *(queue.run("cpu", job("cpu", f"cpu{i}"), progresses[i]) for i in range(4)),
        queue.run("cuda", job("cuda", "cuda0"), Progress()),
    )
    assert names == ["cpu0", "cpu1", "cpu2", "cpu3", "cuda0"]
    assert [n for n in order if n.startswith("cpu")] == ["cpu0", "cpu1", "cpu2", "cpu3"]
    assert most == {"cpu": 1, "cuda": 1}
    assert order.index("cuda0") < order.index("cpu1")  # the other device did not wait
    notes = [u.note for u in progresses[3].history]
    assert notes == ["waiting: 3 ahead", "waiting: 2 ahead", "waiting: 1 ahead"]
    queue.shutdown()


async def test_event_loop_stays_responsive_while_a_job_runs() -> None:
    queue = JobQueue()
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    await queue.run("cpu", lambda progress: time.sleep(0.3), Progress())
    beat.cancel()
    assert ticks >= 15
    queue.shutdown()


async def test_cancelled_queued_job_never_runs_and_running_one_is_asked_to_stop() -> None:
    queue = JobQueue()
    ran: list[str] = []
    started = threading.Event()
    first_progress = Progress()

    def first(progress: Progress) -> str:
        started.set()
        while not progress.cancelled:  # a pipeline checking between steps
            time.sleep(0.005)
        time.sleep(0.05)  # winding down: the queue must wait for this
        ran.append("first finished")
        raise JobCancelled()

    def second(progress: Progress) -> None:
        ran.append("second")

    def third(progress: Progress) -> str:
        ran.append("third")
        return "third"

    running = asyncio.create_task(queue.run("cpu", first, first_progress))
    queued = asyncio.create_task(queue.run("cpu", second, Progress()))
    last = asyncio.create_task(queue.run("cpu", third, Progress()))
    await asyncio.to_thread(started.wait, 5)
    queued.cancel()
    running.cancel()
    for task in (running, queued):
        with pytest.raises(asyncio.CancelledError):
            await task

    assert first_progress.cancelled
    assert await last == "third"
    assert ran == ["first finished", "third"]
    assert queue.waiting("cpu") == 0
    queue.shutdown()


async def test_job_that_stops_itself_reads_as_cancelled_and_errors_pass_through() -> None:
    queue = JobQueue()

    def stops(progress: Progress) -> None:
        raise JobCancelled("stopped by the user")

    def fails(progress: Progress) -> None:
        raise InvalidInput("bad")

    with pytest.raises(asyncio.CancelledError):
        await queue.run("cpu", stops, Progress())
    with pytest.raises(InvalidInput, match="bad"):
        await queue.run("cpu", fails, Progress())
    assert await queue.run("cpu", lambda progress: 42, Progress()) == 42
    queue.shutdown()
