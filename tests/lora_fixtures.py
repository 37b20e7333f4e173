"""LoRA training fixtures (a plugin loaded by tests/conftest.py): pictures, one trained LoRA.

The LoRA is trained once per session, for real (peft on the tiny random-weight SD from
`tiny_sd_dir`, 60 steps, ~3 s on one CPU thread), and shared by the format, training
and resume tests; those compare their own runs against it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from pipelines.training.lora_dataset import DatasetImage, PreparedDataset, prepare_dataset
from pipelines.training.lora_formats import check_lora_name

TRAINED_NAME = "tiny-trained"
TRIGGER = "TOK"
RESOLUTION = 32


def picture(index: int, size: tuple[int, int] = (32, 32), fmt: str = "PNG") -> bytes:
    """A small picture that differs with `index`: a coloured ground and a bright square."""
    image = Image.new("RGB", size, ((60 * index) % 256, 200 - 25 * index % 200, 90))
    draw = ImageDraw.Draw(image)
    x = (5 * index) % max(1, size[0] - 10)
    draw.rectangle((x, 4, x + 9, 13), fill=(250, 250, 250))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def dataset_images(
    count: int = 4, captions: Sequence[str | None] | None = None
) -> list[DatasetImage]:
    captions = captions or [f"a red square number {i}" for i in range(count)]
    return [
        DatasetImage(picture(i), captions[i], "generated", None, f"img_{i}") for i in range(count)
    ]


def prepare(lora_dir: Path, name: str, count: int = 4) -> PreparedDataset:
    """The standard test dataset, prepared where the trainer wants it for `name`."""
    layout = check_lora_name(name, lora_dir)
    return prepare_dataset(
        dataset_images(count), layout.folder, trigger_word=TRIGGER, resolution=RESOLUTION
    )


def training_params(**overrides: object):
    from pipelines.training.lora_training import TrainingParams

    values: dict[str, object] = {
        "steps": 60,
        "rank": 4,
        "alpha": 8.0,  # not the rank: a reload that lost alpha would show
        "learning_rate": 5e-3,
        "batch_size": 4,
        "seed": 3,
        "checkpoint_every": 20,
        "sample_every": 30,
        "sample_steps": 2,
    }
    return TrainingParams(**{**values, **overrides})  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrainedLora:
    result: object  # pipelines.training.lora_training.LoraTrainingResult
    lora_dir: Path
    base_model: str
    history: tuple  # the TrainingProgress's ProgressUpdate history
    losses: tuple[tuple[int, float], ...]


@pytest.fixture(scope="session")
def trained_lora(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedLora:
    from pipelines.training.lora_training import (
        LocalLoraTrainer,
        LocalTrainingRequest,
        TrainingProgress,
    )

    lora_dir = tmp_path_factory.mktemp("trained-loras")
    dataset = prepare(lora_dir, TRAINED_NAME)
    trainer = LocalLoraTrainer(device="cpu", lora_dir=lora_dir)
    progress = TrainingProgress()
    request = LocalTrainingRequest(TRAINED_NAME, str(tiny_sd_dir), dataset, training_params())

    async def train():
        return await trainer.train(request, progress)

    try:
        result = asyncio.run(train())
    finally:
        trainer.runner.shutdown()  # type: ignore[attr-defined]
    return TrainedLora(result, lora_dir, str(tiny_sd_dir), tuple(progress.history), progress.losses)
