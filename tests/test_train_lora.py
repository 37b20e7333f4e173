"""train_lora as a tool: real database (SQLite and PostgreSQL), tiny SD from disk, real peft.

The training runs in the background for real (8 steps at 32 px); assertions read the
registry row, the ledger, the dataset manifest and the images made afterwards.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from core.errors import InvalidInput, NotFound
from memory.curations import CandidateRecord, CurationStore
from memory.db import session_factory
from memory.images import ImageStore, NewImage
from memory.ledger import Ledger
from memory.loras import LoraStore, NewLora
from memory.media_store import MediaStore
from memory.models import LedgerEntry
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.local_diffusers import LocalDiffusers
from pipelines.images.registry import BackendRegistry
from pipelines.training.registry import TrainingBackendRegistry
from pipelines.training.replicate_training import ReplicateLoraTrainer
from tests.db_fixtures import *  # noqa: F403
from tests.lora_fixtures import picture
from tests.tool_helpers import ChatRecorder, tool_context, training_jobs, with_turn
from tools import spending
from tools.context import ToolContext
from tools.generate_image import generate_image
from tools.train_lora import describe_status, resume_training, stop_training, train_lora

THREAD = "6b1f3c52-8f0e-4a57-9a0e-3f1c2d4b5a60"


class Chat(ChatRecorder):
    """Records what the chat would show, and answers the confirmation."""

    def __init__(self) -> None:
        super().__init__(answer=True)
        self.updates: list[tuple[int, int, str]] = []
        self.samples: list[int] = []
        self.ended: list[str] = []

    async def watcher(self, record: Any, text: str) -> Chat:
        self.ended.clear()
        return self

    async def update(self, record: Any, note: str, eta_s: float | None) -> None:
        self.updates.append((record.step, len(record.losses), note))

    async def sample(self, record: Any, step: int, path: Path) -> None:
        assert path.name == f"step-{step:06d}.png"
        self.samples.append(step)

    async def finished(self, record: Any, text: str) -> None:
        self.ended.append(text)


@pytest.fixture
async def world(tmp_path: Path, engine, tiny_sd_dir: Path):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("pat", "password-123")
    lora_dir = tmp_path / "loras"
    local = LocalDiffusers(model=str(tiny_sd_dir), device="cpu", lora_dir=lora_dir)
    chat = Chat()
    jobs = training_jobs(
        LoraStore(engine), lora_dir, local=local, watcher_factory=chat.watcher, publish_every_s=0.05
    )
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"local": local}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        curations=CurationStore(engine),
        prices=PriceTable.load(local_usd_per_gpu_second="0.001"),
        ledger=Ledger(engine),
        port=chat,
        trainings=jobs,
    )
    yield ctx, chat, jobs, engine
    await jobs.stop_all()
    local.runner.shutdown()


async def _images(ctx: ToolContext, count: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + count):
        _, artifact = await generate_image(
            ctx, f"a small red house number {i}", backend="local", size="64x64", steps=2, seed=i
        )
        ids.append(artifact.images[0][0].id)
    return ids


async def _keep(ctx: ToolContext, ids: list[str], kept: int) -> None:
    candidates = [
        CandidateRecord(i, rank, 1.0 / rank, "kept" if rank <= kept else "rejected", "", "user", [])
        for rank, i in enumerate(ids, start=1)
    ]
    await ctx.services.curation_store().record(
        thread_id=ctx.turn.thread_id,
        user_id=ctx.turn.user_id,
        message_id=None,
        prompt="houses",
        style=None,
        weights={},
        keep=kept,
        candidates=candidates,
    )


def _pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def test_kept_images_train_in_the_background_then_the_trigger_word_uses_it(world):
    ctx, chat, jobs, engine = world
    ids = await _images(ctx, 3)
    await _keep(ctx, ids, kept=2)
    text, _ = await train_lora(ctx, "mystyle", trigger_word="TOK", steps=8, resolution=32)
    # The tool returned at once; the job runs on.
    [record] = jobs.running(ctx.turn.user_id)
    assert "Training 'mystyle' started: 8 steps" in text and "/train stop" in text
    assert record.status in ("queued", "running") and record.name == "mystyle"
    [question] = chat.asked
    assert "Train the LoRA 'mystyle'" in question and "2 images (2 generated here" in question
    assert "memory" in question and "cost $" in question and "Estimate: ~" in question
    await asyncio.wait_for(jobs.wait(record.id), 120)
    done = await jobs.loras.get(ctx.turn.user_id, "mystyle")
    assert done.status == "succeeded" and done.step == done.total_steps == 8
    assert done.files["diffusers"] == "mystyle.safetensors"
    assert done.files["kohya"] == "mystyle/mystyle.kohya.safetensors"
    assert (jobs.lora_dir / done.files["kohya"]).is_file()
    assert done.metrics["final_loss"] > 0 and done.metrics["seconds_per_step"] > 0
    assert len(done.losses) == 8 and done.losses[-1][0] == 8
    # The dataset: the kept images, their prompts as captions, their origin.
    images = done.dataset["images"]
    assert sorted(i["source_id"] for i in images) == sorted(ids[:2])
    assert all(i["origin"] == "generated" and i["licence"] is None for i in images)
    assert all(i["caption"].startswith("TOK, a small red house number") for i in images)
    manifest = json.loads((jobs.lora_dir / "mystyle" / "manifest.json").read_text())
    assert [i["sha256"] for i in manifest["images"]] == [i["sha256"] for i in images]
    # Progress was shown as it went, with sample images; the end was announced.
    assert chat.updates and chat.updates[-1][0] == 8
    assert chat.samples == [2, 4, 6, 8]
    assert "is trained" in chat.ended[0] and "draw TOK on a beach" in chat.ended[0]
    # The reservation was settled with the GPU time used.
    async with engine.connect() as conn:
        entry = (await conn.execute(select(LedgerEntry))).all()
    trainings = [e for e in entry if e.what == "training"]
    assert [(e.status, e.source, e.backend) for e in trainings] == [
        ("settled", "reported", "local")
    ]
    # Usable at once: the trigger word applies it; weight 0 (named) does not.
    _, plain = await generate_image(
        ctx, "TOK on a beach", backend="local", size="64x64", steps=2, seed=5, lora="mystyle:0"
    )
    _, styled = await generate_image(
        ctx, "TOK on a beach", backend="local", size="64x64", steps=2, seed=5
    )
    record_styled, data_styled = styled.images[0]
    assert record_styled.parameters["loras"] == [{"name": "mystyle", "weight": 1.0}]
    assert any("Applied your LoRA 'mystyle'" in note for note in styled.notes)
    assert _pixels(data_styled) != _pixels(plain.images[0][1])
    assert "mystyle | TOK | local | succeeded | 8/8" in describe_status([done])


async def test_cancel_at_the_confirmation_starts_nothing(world):
    ctx, chat, jobs, engine = world
    ids = await _images(ctx, 2)
    chat.answer = False
    with pytest.raises(spending.Declined, match="did not start"):
        await train_lora(ctx, "nope", images=ids, steps=8, resolution=32)
    assert await jobs.loras.for_user(ctx.turn.user_id) == []
    assert not (jobs.lora_dir / "nope").exists()  # the name is free again
    async with engine.connect() as conn:
        entries = (await conn.execute(select(LedgerEntry))).all()
    assert [e for e in entries if e.what == "training"] == []


async def test_images_attached_to_the_message_are_the_default_training_set(world):
    """Twenty photos of the dog come with "learn this subject": those, not kept ones."""
    ctx, chat, jobs, engine = world
    await _keep(ctx, await _images(ctx, 2), kept=2)
    uploads = []
    for colour in ((200, 120, 40), (90, 60, 20)):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 48), colour).save(buffer, "PNG")
        record, _ = await ctx.services.images.record(
            ctx.turn.thread_id,
            ctx.turn.user_id,
            NewImage(buffer.getvalue(), "image/png", 48, 48, "my dog", "", "upload", "", {}),
        )
        uploads.append(record.id)
    ctx = with_turn(ctx, attached_images=tuple(uploads))
    chat.answer = False
    with pytest.raises(spending.Declined):
        await train_lora(ctx, "dog", steps=8, resolution=32, licence="mine")
    assert "(0 generated here, 2 uploaded)" in chat.asked[-1], chat.asked[-1]


async def test_stop_keeps_a_checkpoint_and_resume_continues_from_it(world):
    ctx, chat, jobs, _ = world
    ids = await _images(ctx, 2)
    await train_lora(ctx, "long", images=ids, trigger_word="TOK", steps=400, resolution=32)
    [record] = jobs.running(ctx.turn.user_id)
    for _ in range(600):
        row = await jobs.loras.get(ctx.turn.user_id, "long")
        if row.step >= 2:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("gave up after 30 s waiting for training to reach step 2")
    text, _ = await stop_training(ctx, "long")
    assert "checkpoint is kept" in text
    await asyncio.wait_for(jobs.wait(record.id), 60)
    stopped = await jobs.loras.get(ctx.turn.user_id, "long")
    assert stopped.status == "cancelled" and stopped.step >= 2
    assert "/train resume long" in chat.ended[0]
    at = stopped.step
    assert (jobs.lora_dir / "long" / "checkpoints" / f"step-{at:06d}").is_dir()
    text, _ = await resume_training(ctx, "long", steps=at + 3)
    assert f"resumed from step {at}" in text and "Resume training LoRA 'long'" in chat.asked[-1]
    await asyncio.wait_for(jobs.wait(record.id), 60)
    done = await jobs.loras.get(ctx.turn.user_id, "long")
    assert done.status == "succeeded" and done.metrics["resumed_from"] == at
    assert done.step == at + 3 and done.losses[-1][0] == at + 3


async def test_a_job_left_running_by_a_dead_process_is_interrupted(world):
    ctx, _, jobs, _ = world
    store = jobs.loras
    row = await store.create(
        ctx.turn.user_id,
        NewLora("crashed", "local", "m", "TOK", 100, {}, {}, thread_id=None),
    )
    await store.progress(row.id, step=40, losses=[[40, 0.1]])
    assert await store.mark_interrupted() == 1  # what Runtime.start does
    after = await store.get(ctx.turn.user_id, "crashed")
    assert after.status == "interrupted" and after.step == 40
    assert "interrupted (`/train resume crashed`)" in describe_status([after])
    assert jobs.untold_interrupted([after]) == [after]
    assert jobs.untold_interrupted([after]) == []  # told once
    with pytest.raises(InvalidInput, match="no checkpoint"):
        await resume_training(ctx, "crashed")


async def test_bad_inputs_are_refused_with_a_reason(world, engine):  # noqa: F811
    ctx, chat, jobs, _ = world
    with pytest.raises(InvalidInput, match="No images are kept in this conversation"):
        await train_lora(ctx, "empty", steps=8, resolution=32)
    [one] = await _images(ctx, 1)
    with pytest.raises(InvalidInput, match="at least 2 images"):
        await train_lora(ctx, "single", images=[one], steps=8, resolution=32)
    # Someone else's image is not found.
    other_user = await UserStore(session_factory(engine)).add("sam", "password-456")
    other_ctx = with_turn(ctx, user_id=other_user.id)
    with pytest.raises(NotFound):
        other_id = one[:-1] + ("1" if one.endswith("0") else "0")  # never the same id
        await train_lora(other_ctx, "theirs", images=[one, other_id], steps=8)
    # Names already used: in the registry, or on disk.
    await jobs.loras.create(ctx.turn.user_id, NewLora("Taken", "local", "m", "TOK", 8, {}, {}))
    with pytest.raises(InvalidInput, match="already have a LoRA"):
        await train_lora(ctx, "taken", images=[one], steps=8)
    (jobs.lora_dir / "ondisk.safetensors").parent.mkdir(parents=True, exist_ok=True)
    (jobs.lora_dir / "ondisk.safetensors").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="already a LoRA"):
        await train_lora(ctx, "ondisk", images=[one], steps=8)
    with pytest.raises(InvalidInput, match="cannot be a LoRA name"):
        await train_lora(ctx, "../escape", images=[one], steps=8)
    # Uploads: a zip that tries to leave its folder, and one with a non-image.
    for entries, reason in (
        ({"../evil.png": picture(1)}, "points outside"),
        ({"a.png": picture(1), "notes.exe": b"MZ"}, "is not an image"),
    ):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
        zipped = with_turn(ctx, attached_zips=(("upload.zip", out.getvalue()),))
        with pytest.raises(InvalidInput, match=reason):
            await train_lora(zipped, "zipped", steps=8)
    with pytest.raises(InvalidInput, match="steps must be"):
        await train_lora(ctx, "zero", images=[one], steps=0)
    assert chat.asked == []  # nothing got as far as the question
    assert [r.name for r in await jobs.loras.for_user(ctx.turn.user_id)] == ["Taken"]


async def test_uploaded_zip_with_licence_trains_on_replicate(world, fake_replicate):
    ctx, chat, jobs, engine = world
    jobs.backends = TrainingBackendRegistry(
        {
            "local": jobs.backends.get("local"),
            "replicate": ReplicateLoraTrainer(
                fake_replicate.api_token, base_url=fake_replicate.base_url, poll_interval_s=0.01
            ),
        }
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(3):
            archive.writestr(f"dog{i}.png", picture(i, (64, 64)))
        archive.writestr("dog0.txt", "my dog on grass")
    # An uploaded image in the chat counts as uploaded too.
    upload, _ = await ctx.services.images.record(
        ctx.turn.thread_id,
        ctx.turn.user_id,
        NewImage(picture(9, (64, 64)), "image/png", 64, 64, "learn my dog", "", "upload", "", {}),
    )
    zipped = with_turn(ctx, attached_zips=(("dogs.zip", out.getvalue()),))
    with pytest.raises(InvalidInput, match="destination"):
        await train_lora(zipped, "dog", backend="replicate")
    await train_lora(
        zipped,
        "dog",
        trigger_word="DOGGO",
        backend="replicate",
        steps=300,
        resolution=64,
        licence="own photos",
        destination="me/my-dog",
        images=[upload.id],
    )
    assert "on Replicate" in chat.asked[-1] and "4 uploaded" in chat.asked[-1]
    [record] = jobs.running(ctx.turn.user_id)
    await asyncio.wait_for(jobs.wait(record.id), 60)
    done = await jobs.loras.get(ctx.turn.user_id, "dog")
    assert done.status == "succeeded", done.error
    assert done.replicate_version.startswith("me/my-dog:")
    assert fake_replicate.versions  # runnable as replicate:<version>
    assert {i["origin"] for i in done.dataset["images"]} == {"uploaded"}
    assert {i["licence"] for i in done.dataset["images"]} == {"own photos"}
    captions = sorted(i["caption"] for i in done.dataset["images"])
    assert "DOGGO, my dog on grass" in captions and captions.count("DOGGO") == 3
    assert done.losses and "--backend replicate:me/my-dog:" in chat.ended[0]
    async with engine.connect() as conn:
        [entry] = (
            await conn.execute(select(LedgerEntry).where(LedgerEntry.what == "training"))
        ).all()
    assert (entry.what, entry.status, entry.backend) == ("training", "settled", "replicate")
    assert entry.model == "ostris/flux-dev-lora-trainer" and entry.actual_usd > 0
