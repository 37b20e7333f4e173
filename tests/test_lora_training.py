"""Local LoRA training for real: peft on the tiny random-weight SD, through the job queue.

The session fixture `trained_lora` trains 60 steps once; tests here check that it learned
(on a fixed set of noise/timestep pairs, measured independently with the saved file),
that the local backend can use it by name at once, and that stopping, crashing and
resuming end in exactly the weights of the uninterrupted run.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidInput
from pipelines.images.base import ImageRequest, LoraSpec
from pipelines.images.local_diffusers import LocalDiffusers, available_loras
from pipelines.progress import ProgressUpdate
from pipelines.training.lora_formats import LoraLayout, load_lora
from pipelines.training.lora_training import (
    LocalLoraTrainer,
    LocalTrainingRequest,
    TrainingProgress,
)
from tests.lora_fixtures import TRAINED_NAME, prepare, training_params

pytest.importorskip("peft", reason="the local extra (pip install 'atelier[local]')")


def request(name: str, model: str, lora_dir: Path, **overrides: object) -> LocalTrainingRequest:
    from pipelines.training.lora_dataset import load_dataset

    folder = LoraLayout(lora_dir, name).folder
    dataset = (
        load_dataset(folder) if (folder / "manifest.json").exists() else prepare(lora_dir, name)
    )
    resume = bool(overrides.pop("resume", False))
    return LocalTrainingRequest(name, model, dataset, training_params(**overrides), resume)


def step_updates(history) -> list[int]:
    return [u.done for u in history if u.note.startswith("step ")]


def fixed_pair_loss(pipe, dataset) -> float:
    """Noise-prediction loss on fixed (image, noise, timestep) triples, computed here
    independently of the trainer, with whatever LoRA `pipe` has loaded."""
    import torch
    import torch.nn.functional as F

    scheduler_config = pipe.scheduler.config
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config)
    pixels = [
        np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
        for path in dataset.image_paths()
    ]
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    tokens = pipe.tokenizer(
        dataset.captions(), padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    generator = torch.Generator().manual_seed(123)
    losses = []
    with torch.no_grad():
        latents = pipe.vae.encode(batch).latent_dist.mean * pipe.vae.config.scaling_factor
        embeddings = pipe.text_encoder(tokens)[0]
        for timestep in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=generator)
            steps = torch.full((len(latents),), timestep)
            noisy = scheduler.add_noise(latents, noise, steps)
            prediction = pipe.unet(noisy, steps, embeddings).sample
            losses.append(F.mse_loss(prediction, noise).item())
    return float(np.mean(losses))


# --------------------------------------------------------------------------- a finished run


def test_training_learns_and_the_saved_file_carries_it(trained_lora) -> None:
    from diffusers import StableDiffusionPipeline

    result = trained_lora.result
    (start, before), (end, after) = result.probe_losses
    assert (start, end) == (0, 60) and after < before * 0.98

    from pipelines.training.lora_dataset import load_dataset

    dataset = load_dataset(LoraLayout(trained_lora.lora_dir, TRAINED_NAME).folder)
    pipe = StableDiffusionPipeline.from_pretrained(trained_lora.base_model)
    base_loss = fixed_pair_loss(pipe, dataset)
    pipe.load_lora_weights(str(result.lora_file.parent), weight_name=result.lora_file.name)
    assert fixed_pair_loss(pipe, dataset) < base_loss


def test_progress_losses_samples_and_files(trained_lora) -> None:
    result, lora_dir = trained_lora.result, trained_lora.lora_dir
    assert step_updates(trained_lora.history) == list(range(1, 61))
    assert [step for step, _ in result.losses] == list(range(1, 61))
    assert result.losses == trained_lora.losses  # what a live chart saw
    assert all(np.isfinite(loss) for _, loss in result.losses)
    assert [step for step, _ in result.samples] == [30, 60]
    for _, path in result.samples:
        assert Image.open(path).size == (32, 32)
    assert (result.device, result.dtype, result.resumed_from) == ("cpu", "float32", None)

    layout = LoraLayout(lora_dir, TRAINED_NAME)
    assert result.lora_file == layout.weights and result.kohya_file == layout.kohya_weights
    assert result.manifest == layout.manifest and layout.manifest.is_file()
    assert not layout.checkpoints.exists()  # finished: the checkpoints are gone
    record = json.loads(layout.training_record.read_text())
    assert record["params"]["rank"] == 4 and len(record["losses"]) == 60
    assert set(record["timings"]) == {"load_s", "prepare_s", "train_s"}


async def test_the_new_lora_is_usable_by_name_at_once(trained_lora) -> None:
    backend = LocalDiffusers(
        model=trained_lora.base_model, device="cpu", lora_dir=trained_lora.lora_dir
    )
    ask = ImageRequest("TOK, a red square", size="64x64", steps=2, seed=4)
    try:
        plain = await backend.generate(ask)
        styled = await backend.generate(replace(ask, loras=(LoraSpec(TRAINED_NAME, 1.0),)))
        zero = await backend.generate(replace(ask, loras=(LoraSpec(TRAINED_NAME, 0.0),)))
    finally:
        backend.runner.shutdown()  # type: ignore[attr-defined]
    assert available_loras(trained_lora.lora_dir) == [TRAINED_NAME]  # not the kohya copy
    assert styled.images[0].data != plain.images[0].data
    assert zero.images[0].data == plain.images[0].data


# --------------------------------------------------------------------------- stop, crash, resume


class CrashingProgress(TrainingProgress):
    """Dies like a killed process right after step `at` (after an earlier checkpoint)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def report(self, done: int, total: int, note: str = "") -> None:
        super().report(done, total, note)
        if note.startswith("step ") and done == self.at:
            raise RuntimeError("simulated power cut")


class StoppingProgress(TrainingProgress):
    """The user presses stop while step `at` is being reported."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def report(self, done: int, total: int, note: str = "") -> None:
        super().report(done, total, note)
        if note.startswith("step ") and done == self.at:
            self.cancel()


async def test_crash_then_stop_then_resume_ends_like_an_uninterrupted_run(
    trained_lora, tmp_path: Path
) -> None:
    model, name = trained_lora.base_model, "interrupted"
    trainer = LocalLoraTrainer(device="cpu", lora_dir=tmp_path)
    try:
        # A crash after step 25: the checkpoint of step 20 survives.
        with pytest.raises(RuntimeError, match="power cut"):
            await trainer.train(
                request(name, model, tmp_path, sample_every=0), CrashingProgress(25)
            )
        assert trainer.checkpoint_step(name) == 20
        with pytest.raises(InvalidInput, match="stopped at step 20; resume it"):
            await trainer.train(request(name, model, tmp_path))
        with pytest.raises(InvalidInput, match=r"learning_rate \(was 0.005, now 0.001\)"):
            await trainer.train(request(name, model, tmp_path, resume=True, learning_rate=1e-3))

        # Resumed from 20, then stopped by the user at step 30: that step is kept.
        stopping = StoppingProgress(30)
        with pytest.raises(asyncio.CancelledError):
            await trainer.train(request(name, model, tmp_path, resume=True), stopping)
        assert step_updates(stopping.history) == list(range(21, 31))
        assert "resuming from step 20" in [u.note for u in stopping.history]
        assert trainer.checkpoint_step(name) == 30

        # Resumed again from 30, to the end.
        progress = TrainingProgress()
        result = await trainer.train(request(name, model, tmp_path, resume=True), progress)
    finally:
        trainer.runner.shutdown()  # type: ignore[attr-defined]
    assert result.resumed_from == 30
    assert step_updates(progress.history) == list(range(31, 61))
    assert [s for s, _ in progress.losses] == list(range(1, 61))  # the chart continues
    # Same seed, same data: the same run as the uninterrupted one, to the last bit.
    assert result.losses == trained_lora.result.losses
    mine, theirs = load_lora(result.lora_file)[0], load_lora(trained_lora.result.lora_file)[0]
    import torch

    assert all(torch.equal(mine[key], theirs[key]) for key in theirs)


async def test_stopping_the_task_stops_in_a_few_steps_while_generation_waits(
    trained_lora, tmp_path: Path
) -> None:
    backend = LocalDiffusers(model=trained_lora.base_model, device="cpu")
    trainer = LocalLoraTrainer(backend.runner, device="cpu", lora_dir=tmp_path)
    reached = asyncio.Event()

    async def watch(update: ProgressUpdate) -> None:
        if update.note.startswith("step ") and update.done >= 3:
            reached.set()

    progress = TrainingProgress(watch)
    training = asyncio.create_task(
        trainer.train(request("long", trained_lora.base_model, tmp_path, steps=2000), progress)
    )
    try:
        await asyncio.wait_for(reached.wait(), 60)
        waiting = TrainingProgress()  # any Progress: it only reads the queue's notes
        generation = asyncio.create_task(
            backend.generate(ImageRequest("a cat", size="64x64", steps=2, seed=1), waiting)
        )
        await asyncio.sleep(0.05)
        stopped_at = progress.latest.done
        training.cancel()
        with pytest.raises(asyncio.CancelledError):
            await training
        made = await generation
    finally:
        backend.runner.shutdown()  # type: ignore[attr-defined]
    last = max(step_updates(progress.history))
    assert last <= stopped_at + 3
    assert trainer.checkpoint_step("long") == last  # nothing finished was lost
    assert waiting.history[0].note == "waiting: 1 ahead"  # it queued behind the training
    assert made.images


# --------------------------------------------------------------------------- options


async def test_gradient_checkpointing_and_v_prediction(trained_lora, tmp_path: Path) -> None:
    model = trained_lora.base_model
    trainer = LocalLoraTrainer(device="cpu", lora_dir=tmp_path)
    v_model = shutil.copytree(model, tmp_path / "tiny-v")
    config_path = v_model / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    short = {"steps": 3, "sample_every": 0, "checkpoint_every": 0}
    try:
        plain = await trainer.train(request("plain", model, tmp_path, **short))
        saving = await trainer.train(
            request("gc", model, tmp_path, gradient_checkpointing=True, **short)
        )
        velocity = await trainer.train(request("v", str(v_model), tmp_path, **short))
    finally:
        trainer.runner.shutdown()  # type: ignore[attr-defined]

    def values(result) -> list[float]:
        return [loss for _, loss in result.losses]

    assert np.allclose(values(saving), values(plain), rtol=1e-5)
    assert values(velocity) != values(plain)
    assert all(np.isfinite(values(velocity)))


async def test_bad_settings_are_refused_before_loading(trained_lora, tmp_path: Path) -> None:
    model = trained_lora.base_model
    trainer = LocalLoraTrainer(device="cpu", lora_dir=tmp_path)
    cases = [
        ({"batch_size": 5}, r"batch_size must be 1 to 4 \(no more than the 4 images\)"),
        ({"learning_rate": 0.0}, "learning_rate must be above 0"),
        ({"steps": 0}, "steps must be 1 to 100000"),
        ({"rank": 0}, "rank must be 1 to 256"),
        ({"resume": True}, "no stopped training of 'fresh' to resume"),
    ]
    for overrides, message in cases:
        with pytest.raises(InvalidInput, match=message):
            await trainer.train(request("fresh", model, tmp_path, **overrides))
    with pytest.raises(InvalidInput, match="already trained"):
        await LocalLoraTrainer(device="cpu", lora_dir=trained_lora.lora_dir).train(
            request(TRAINED_NAME, model, trained_lora.lora_dir)
        )
    elsewhere = request("fresh", model, tmp_path)
    with pytest.raises(ValueError, match="prepare the dataset into"):
        await LocalLoraTrainer(device="cpu", lora_dir=tmp_path / "other").train(elsewhere)
    with pytest.raises(InvalidInput, match="No LoRA folder is configured"):
        await LocalLoraTrainer(device="cpu").train(elsewhere)


def test_a_pipeline_that_is_not_stable_diffusion_is_refused() -> None:
    from pipelines.training.lora_training import _check_pipeline

    class StableDiffusionXLPipeline:  # the class name an SDXL folder loads as
        pass

    with pytest.raises(InvalidInput, match="supports Stable Diffusion 1.x/2.x.*loads as Stable"):
        _check_pipeline(StableDiffusionXLPipeline(), "my-sdxl")
