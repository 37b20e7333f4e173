"""Attack: use another user's LoRA, and learn their names and the server's folder (#5).

Before the fix Bob could apply Alice's trained LoRA by name, and an unknown name was
answered with every user's LoRA names and the LoRA folder's path. Now LoRAs are looked
up by owner (tools/lora_access.py): Alice's LoRA is refused to Bob exactly like a name
that does not exist, the answer lists only Bob's own LoRAs and the operator's shared
ones, and no error shows a server path. The same holds for Alice's Replicate-trained
LoRA model, and for the other per-user lookups (trainings, curations, images).

Real tiny diffusers pipeline and LoRA file from disk, the real `replicate` client on the
fake server, a real database (SQLite and PostgreSQL); rows are read back.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.errors import InvalidInput, NotFound
from memory.curations import CurationStore
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.loras import LoraStore, NewLora
from memory.media_store import MediaStore
from memory.models import Image, LedgerEntry, LoraModel
from memory.users import UserStore
from memory.videos import VideoStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.local_diffusers import LocalDiffusers
from pipelines.images.registry import BackendRegistry
from pipelines.images.replicate_images import ReplicateImages
from pipelines.training.replicate_training import ReplicateLoraTrainer
from pipelines.video.replicate_video import ReplicateVideo
from pipelines.video.video_registry import VideoBackendRegistry
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.replicate_server import FakeReplicate
from tests.replicate_fixtures import fetch_policy_for
from tests.tiny_fixtures import LORA_NAME
from tests.tool_helpers import tool_context, training_jobs
from tools.context import GenerationDefaults, ToolContext
from tools.edit_image import edit_image
from tools.generate_image import generate_image
from tools.generate_video import generate_video
from tools.keep_image import keep_image
from tools.train_lora import resume_training, stop_training, train_lora, training_status

ALICE_THREAD = "1a2b3c4d-1111-4a57-9a0e-3f1c2d4b5a60"
BOB_THREAD = "1a2b3c4d-2222-4a57-9a0e-3f1c2d4b5a60"
VERSION = "acme/fox-lora:" + "ab" * 32
LOCAL = {"backend": "local", "size": "64x64", "steps": 2, "seed": 3}


class World:
    def __init__(self, alice: ToolContext, bob: ToolContext, db: Any, local: LocalDiffusers):
        self.alice, self.bob, self.db, self.local = alice, bob, db, local

    async def count(self, model: type, user_id: str) -> int:
        async with session_factory(self.db)() as session:
            query = select(func.count()).select_from(model).where(model.user_id == user_id)
            return int(await session.scalar(query) or 0)


@pytest.fixture
async def world(
    tmp_path: Path,
    engine: Any,  # noqa: F811
    tiny_sd_dir: Path,
    tiny_lora_dir: Path,
    fake_replicate: FakeReplicate,
):
    users = UserStore(session_factory(engine))
    alice, bob = await users.add("alice", "password-123"), await users.add("bob", "password-456")
    # The LoRA folder: Alice's trained 'inkfox' (file + training folder), and a file the
    # operator put there for everyone.
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    trained = tiny_lora_dir / f"{LORA_NAME}.safetensors"
    shutil.copy(trained, lora_dir / "inkfox.safetensors")
    (lora_dir / "inkfox").mkdir()
    shutil.copy(trained, lora_dir / "shared-style.safetensors")
    loras = LoraStore(engine)
    mine = await loras.create(
        alice.id, NewLora("inkfox", "local", str(tiny_sd_dir), "INKFOX", 8, {}, {})
    )
    await loras.update(mine.id, alice.id, status="succeeded", step=8)
    hers = await loras.create(
        alice.id,
        NewLora(
            "acmefox",
            "replicate",
            "ostris/flux-dev-lora-trainer",
            "ACME",
            300,
            {},
            {"destination": "acme/fox-lora"},
        ),
    )
    await loras.update(hers.id, alice.id, status="succeeded", replicate_version=VERSION)

    hosted = {
        "base_url": fake_replicate.base_url,
        "poll_interval_s": 0.01,
        "timeout_s": 10.0,
        "fetch_policy": fetch_policy_for(fake_replicate),
    }
    token = fake_replicate.api_token or ""
    local = LocalDiffusers(model=str(tiny_sd_dir), device="cpu", lora_dir=lora_dir)
    media = MediaStore(tmp_path / "media")
    jobs = training_jobs(
        loras,
        lora_dir,
        local=local,
        replicate=ReplicateLoraTrainer(
            token, base_url=fake_replicate.base_url, poll_interval_s=0.01
        ),
    )

    def context(thread_id: str, user_id: str) -> ToolContext:
        return tool_context(
            thread_id=thread_id,
            user_id=user_id,
            backends=BackendRegistry(
                {"local": local, "replicate": ReplicateImages(token, **hosted)}
            ),
            images=ImageStore(engine, media),
            defaults=GenerationDefaults(backend="local"),
            prices=PriceTable.load(local_usd_per_gpu_second="0.001"),
            ledger=Ledger(engine),
            curations=CurationStore(engine),
            videos=VideoStore(engine, media),
            video_backends=VideoBackendRegistry({"replicate": ReplicateVideo(token, **hosted)}),
            trainings=jobs,
        )

    yield World(context(ALICE_THREAD, alice.id), context(BOB_THREAD, bob.id), engine, local)
    await jobs.stop_all()
    local.runner.shutdown()  # type: ignore[attr-defined]


def _no_path(message: str, *paths: Path) -> None:
    for path in paths:
        assert str(path) not in message, message
    assert "/tmp" not in message and "loras/" not in message, message


async def test_bob_cannot_apply_alices_lora_and_learns_nothing(world: World, tmp_path: Path):
    bob = world.bob
    refusals = {}
    for asked in ("inkfox", "InkFox", "INKFOX:0.8", "nopex", "../inkfox"):
        with pytest.raises(InvalidInput) as info:
            await generate_image(bob, "a fox", lora=asked, **LOCAL)
        refusals[asked] = info.value.message
        _no_path(info.value.message, tmp_path)
        assert "acmefox" not in info.value.message
    # Alice's name is answered exactly like a name that does not exist.
    name = refusals["inkfox"].split("'")[1]
    assert refusals["inkfox"].replace(name, "X") == refusals["nopex"].replace("nopex", "X")
    assert refusals["nopex"] == (
        "There is no LoRA named 'nopex' that you can use. Yours: none yet (`/train NAME` "
        "trains one). Shared on this server: shared-style."
    )
    assert world.local.cache.loads == 0  # refused before the model was even loaded
    assert await world.count(Image, bob.turn.user_id) == 0
    assert await world.count(LedgerEntry, bob.turn.user_id) == 0


async def test_owners_use_their_own_and_everyone_the_operators(world: World):
    alice, bob = world.alice, world.bob
    _, mine = await generate_image(alice, "a fox", lora="InkFox:0.8", **LOCAL)
    [(record, _)] = mine.images
    assert record.parameters["loras"] == [{"name": "inkfox", "weight": 0.8}]
    for ctx in (alice, bob):
        _, shared = await generate_image(ctx, "a fox", lora="shared-style", **LOCAL)
        assert shared.images[0][0].parameters["loras"][0]["name"] == "shared-style"
    # Alice's trigger word in Bob's prompt does not reach her LoRA either.
    _, plain = await generate_image(bob, "INKFOX on a beach", **LOCAL)
    assert plain.images[0][0].parameters["loras"] == []
    assert not plain.notes


async def test_alices_replicate_trained_lora_is_hers(world: World, fake_replicate):
    alice, bob = world.alice, world.bob
    for spec in (f"replicate:{VERSION}", "replicate:acme/fox-lora", "replicate:ACME/Fox-Lora"):
        with pytest.raises(InvalidInput, match="is not available to you") as info:
            await generate_image(bob, "a fox", backend=spec)
        assert "acmefox" not in info.value.message
    with pytest.raises(InvalidInput, match="is not available to you"):
        await generate_video(bob, "a fox runs", backend="replicate:acme/fox-lora")
    # Nor may Bob push his own training into her model.
    with pytest.raises(InvalidInput, match="cannot be the destination"):
        await train_lora(
            bob, "bobfox", backend="replicate", destination="acme/fox-lora", images=["x", "y"]
        )
    assert fake_replicate.requests == []
    assert await world.count(LoraModel, bob.turn.user_id) == 0
    assert await world.count(LedgerEntry, bob.turn.user_id) == 0
    # Alice runs it.
    _, made = await generate_image(alice, "a fox", backend=f"replicate:{VERSION}")
    assert made.images and len(fake_replicate.creates()) == 1


async def test_other_per_user_lookups_are_owner_scoped(world: World, tmp_path: Path):
    alice, bob = world.alice, world.bob
    _, mine = await generate_image(alice, "a fox", **LOCAL)
    image_id = mine.images[0][0].id
    with pytest.raises(NotFound, match="no LoRA called 'inkfox'"):
        await resume_training(bob, "inkfox")
    with pytest.raises(InvalidInput, match="no training called 'inkfox'"):
        await stop_training(bob, "inkfox")
    status = await training_status(bob)
    assert "inkfox" not in status and "acmefox" not in status
    for attempt in (
        keep_image(bob, image_id),
        edit_image(bob, "make it blue", image_id=image_id),
        bob.image(image_id),
    ):
        with pytest.raises(NotFound) as info:
            await attempt
        _no_path(info.value.message, tmp_path)
    # The LoRA name is taken for everyone (one folder), said without the folder's path.
    with pytest.raises(InvalidInput, match="already a LoRA, a training or a shared") as info:
        await train_lora(bob, "inkfox", images=[image_id])
    _no_path(info.value.message, tmp_path)
    assert await world.count(Image, bob.turn.user_id) == 0
