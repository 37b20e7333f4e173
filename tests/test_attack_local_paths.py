"""Attack: probe the server's files through `--backend local:/some/path` (issue 12, #10).

Before the fix any user could name any folder as a local model, and the error for a
missing path differed from the one for a folder that is not a model: a file-existence
oracle, with the resolved server path in the message. Now a user may name only a hub id
(`owner/name`), the operator's configured model, or a path inside the operator's models
folder (pipelines/model_sources.py); anything else is refused with one message that
depends only on the text typed. Hub ids are fetched from the hub, never read from a
folder of the same name.

Tried through every way in: the tool (as the agent calls it), the backend's
capabilities (what the settings panel and `/backend` check), video, LoRA training, and
the real app over its chat protocol. Nothing is loaded, made or spent.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.errors import InvalidInput
from memory.curations import CurationStore
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger
from memory.loras import LoraStore
from memory.media_store import MediaStore
from memory.models import Image, LedgerEntry
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.local_diffusers import LocalDiffusers
from pipelines.images.registry import BackendRegistry
from pipelines.video.local_video import LocalStableVideo
from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.tool_helpers import tool_context, training_jobs
from tools.context import GenerationDefaults
from tools.generate_image import generate_image
from tools.train_lora import train_lora

THREAD = "9e8d7c6b-5a49-4c38-b27a-16f5e4d3c2b1"
REPO = Path(__file__).resolve().parents[1]


def hostile_paths(tmp_path: Path, tiny_sd_dir: Path) -> list[str]:
    """Existing and missing paths, absolute and relative, and escapes from the models folder."""
    models = tmp_path / "models"
    return [
        "/etc",
        "/etc/passwd",
        "/definitely/not/here",
        str(tiny_sd_dir.parent),  # exists, outside the models folder
        str(tmp_path),
        str(models),  # the models folder itself is not a model
        f"{models}/../x",
        f"{models}/allowed-sd/../../x",
        "~/anything",
        "~root",
        "./chat_app",
        "../secrets",
        "tests/fakes/../../chat_app",
        "C:\\Windows",
    ]


def _same(messages: dict[str, str]) -> None:
    """Every refusal is the one message, with only the typed text (shortened) differing."""
    shapes = set()
    for asked, message in messages.items():
        quoted, _, rest = message.partition(" cannot be used as a local model.")
        if quoted.endswith("...'"):
            assert asked.startswith(quoted[1:-4]), (asked, message)
        else:
            assert quoted == repr(asked), (asked, message)
        shapes.add(rest)
    assert len(shapes) == 1, shapes
    assert "ATELIER_LOCAL_MODELS_DIR" in shapes.pop()


@pytest.fixture
async def world(tmp_path: Path, engine: Any, tiny_sd_dir: Path):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("mallory", "password-123")
    models = tmp_path / "models"
    models.mkdir()
    (models / "allowed-sd").symlink_to(tiny_sd_dir, target_is_directory=True)
    local = LocalDiffusers(
        model=str(tiny_sd_dir), device="cpu", lora_dir=tmp_path / "loras", models_dir=models
    )
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"local": local}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="local"),
        prices=PriceTable.load(local_usd_per_gpu_second="0.001"),
        ledger=Ledger(engine),
        curations=CurationStore(engine),
        trainings=training_jobs(LoraStore(engine), tmp_path / "loras", local=local),
    )
    yield ctx, local, engine
    local.runner.shutdown()  # type: ignore[attr-defined]


def _in_the_repository() -> bool:
    return Path("tests/fakes").is_dir()


async def _count(db: Any, model: type) -> int:
    async with session_factory(db)() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_every_way_in_refuses_paths_with_one_message(world, tmp_path, tiny_sd_dir):
    ctx, local, db = world
    video = LocalStableVideo(device="cpu", models_dir=tmp_path / "models")
    by_tool, by_panel, by_video, by_training = {}, {}, {}, {}
    for path in hostile_paths(tmp_path, tiny_sd_dir):
        with pytest.raises(InvalidInput) as info:
            await generate_image(ctx, "a cat", backend=f"local:{path}", size="64x64")
        by_tool[path] = info.value.message
        backend, model = ctx.services.backends.resolve(f"local:{path}")  # the panel and /backend
        with pytest.raises(InvalidInput) as info:
            backend.capabilities(model)
        by_panel[path] = info.value.message
        with pytest.raises(InvalidInput) as info:
            video.capabilities(path)
        by_video[path] = info.value.message
        with pytest.raises(InvalidInput) as info:
            await train_lora(ctx, "probe", base_model=path, images=["a", "b"])
        by_training[path] = info.value.message
    for messages in (by_tool, by_panel, by_video, by_training):
        _same(messages)
    assert local.cache.loads == 0  # nothing was ever read as a model
    assert await _count(db, Image) == 0 and await _count(db, LedgerEntry) == 0
    assert not (tmp_path / "loras" / "probe").exists()


async def test_a_hub_id_never_reads_a_folder_of_that_name(world):
    """`tests/fakes` is a folder under the working directory; `tests/nopes` is not."""
    ctx, local, _ = world
    if not _in_the_repository():
        pytest.skip("run from the repository root")
    messages = {}
    for name in ("tests/fakes", "tests/nopes"):  # same length: the same truncation
        with pytest.raises(InvalidInput) as info:
            await generate_image(ctx, "a cat", backend=f"local:{name}", size="64x64", steps=2)
        messages[name] = info.value.message.replace(name, "<asked>")
    assert messages["tests/fakes"] == messages["tests/nopes"]
    assert "Hugging Face Hub" in messages["tests/fakes"]
    assert str(REPO) not in messages["tests/fakes"]
    assert local.cache.loads == 0


async def test_the_operators_models_and_folder_still_work(world, tmp_path):
    ctx, local, db = world
    models = tmp_path / "models"
    _, made = await generate_image(ctx, "a cat", backend="local", size="64x64", steps=2)
    _, chosen = await generate_image(
        ctx, "a cat", backend=f"local:{models}/allowed-sd", size="64x64", steps=2
    )
    assert made.images and chosen.images
    # Inside the models folder a missing model may be named: by its last part only.
    with pytest.raises(InvalidInput, match="'missing-sd' does not exist") as info:
        await generate_image(ctx, "a cat", backend=f"local:{models}/missing-sd", size="64x64")
    assert str(tmp_path) not in info.value.message


@pytest.mark.slow
async def test_through_the_app_backend_command_panel_and_image_option(make_app, tiny_sd_dir: Path):
    app = make_app(ATELIER_LOCAL_MODEL=str(tiny_sd_dir))
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    replies: dict[str, list[tuple[str, ...]]] = {}
    for path in ("/etc", "/nonexistent-xyz", str(tiny_sd_dir.parent), "/etc/passwd"):
        answers = [
            outputs(await chat.send(f"/backend local:{path}")),
            outputs(await chat.send(f"/image a cat --backend local:{path}")),
            outputs(await chat.change_settings({"backend": "local", "model": path})),
        ]
        for texts in answers:  # each way in is refused
            assert any("cannot be used as a local model" in text for text in texts), texts
        replies[path] = [tuple(t.replace(repr(path), "<asked>") for t in a) for a in answers]
    # Word for word the same, whether the path exists or not.
    assert len({tuple(answers) for answers in replies.values()}) == 1, replies
    # Nothing was switched: the conversation's backend names none of those paths.
    current = " ".join(outputs(await chat.send("/backend")))
    assert "Current:" in current and "/etc" not in current and "nonexistent" not in current
    await chat.close()
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] == 0
