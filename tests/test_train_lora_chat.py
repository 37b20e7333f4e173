"""Training a LoRA through the real app: confirm, background progress, use, reload.

The app runs as a subprocess on the tiny random-weight SD from disk; the LoRA folder is
under tmp. The training is real (6 steps at 32 px).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from chat_app.spending_prompts import CONFIRM
from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


async def test_train_then_use_then_reload(make_app, tiny_sd_dir, tmp_path):
    app = make_app(ATELIER_LOCAL_MODEL=str(tiny_sd_dir), ATELIER_LORA_DIR=str(tmp_path / "loras"))
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    await chat.send("/backend local")
    for seed in (1, 2):
        await chat.send(f"/image a small red house --size 64x64 --steps 2 --seed {seed}")
    ids = [row["id"][:8] for row in app_rows(app, "SELECT id FROM images ORDER BY created_at")]
    assert len(ids) == 2
    chat.ask_answer = CONFIRM
    reply = outputs(
        await chat.send(
            f"/train mystyle --trigger TOK --steps 6 --resolution 32 --images {','.join(ids)}"
        )
    )
    [question] = [ask for ask in chat.asks]
    assert "Train the LoRA 'mystyle'" in json.dumps(question) and "Estimate" in json.dumps(question)
    assert any("Training 'mystyle' started: 6 steps" in text for text in reply), reply
    # The same thread reloaded in another page while it trains: progress stays live there.
    viewer = ChatSession(app.base_url, cookie)
    await viewer.connect(resume_thread=chat.thread_id)
    status = ""
    for _ in range(240):
        status = "\n".join(outputs(await chat.send("/train status")))
        if "succeeded" in status or "failed" in status:
            break
        await asyncio.sleep(0.5)
    assert "| mystyle | TOK | local | succeeded | 6/6 |" in status, status
    [lora] = app_rows(app, "SELECT * FROM loras")
    assert json.loads(lora["files"])["diffusers"] == "mystyle.safetensors"
    live = [
        data["output"]
        for event, data in viewer.events
        if event == "update_message" and data["id"] == lora["message_id"]
    ]
    assert live and "LoRA 'mystyle' is trained" in live[-1], live
    await viewer.close()
    # Usable at once, by name and by trigger word.
    await chat.send("/image TOK on a beach --lora mystyle --size 64x64 --steps 2")
    await chat.send("/image TOK on a beach --size 64x64 --steps 2")
    named, triggered = app_rows(app, "SELECT parameters FROM images ORDER BY created_at")[-2:]
    for row in (named, triggered):
        assert json.loads(row["parameters"])["loras"] == [{"name": "mystyle", "weight": 1.0}]
    await chat.close()
    # A fresh page: the training message with its latest text and its loss chart.
    again = ChatSession(app.base_url, cookie)
    await again.connect(resume_thread=chat.thread_id)
    assert again.resumed is not None
    steps = {step["id"]: step for step in again.resumed["steps"]}
    [message] = [s for s in steps.values() if "LoRA 'mystyle' is trained" in (s["output"] or "")]
    assert message["id"] == lora["message_id"]
    kinds = [e["type"] for e in again.resumed["elements"] if e["forId"] == message["id"]]
    assert kinds.count("plotly") == 1 and kinds.count("image") >= 1
    await again.close()


def _zip(entries: dict[str, bytes]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, "PNG")
    return buffer.getvalue()


async def test_a_zip_attached_to_train_is_the_training_set(make_app, tiny_sd_dir, tmp_path):
    """"Twenty photos of my dog" arrive as a zip with the /train message."""
    app = make_app(ATELIER_LOCAL_MODEL=str(tiny_sd_dir), ATELIER_LORA_DIR=str(tmp_path / "loras"))
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    await chat.send("/backend local")
    bad = chat.upload("dogs.zip", _zip({"../evil.png": _png((1, 2, 3))}), "application/zip")
    reply = outputs(await chat.send("/train baddog --trigger DOG --steps 2", files=[bad]))
    assert any("evil.png" in text for text in reply), reply
    photos = _zip({"dog1.png": _png((200, 120, 40)), "dog2.png": _png((90, 60, 20))})
    good = chat.upload("dogs.zip", photos, "application/zip")
    chat.ask_answer = CONFIRM
    reply = outputs(
        await chat.send(
            "/train zipdog --trigger DOG --steps 2 --resolution 32 --licence CC-BY-4.0",
            files=[good],
        )
    )
    assert any("Training 'zipdog' started" in text for text in reply), reply
    assert app_rows(app, "SELECT * FROM images") == []  # a training set, not chat images
    for _ in range(240):
        status = "\n".join(outputs(await chat.send("/train status")))
        if "succeeded" in status or "failed" in status:
            break
        await asyncio.sleep(0.5)
    assert "| zipdog | DOG | local | succeeded |" in status, status
    [lora] = app_rows(app, "SELECT dataset FROM loras WHERE name = 'zipdog'")
    dataset = json.loads(lora["dataset"])
    images = dataset["images"] if isinstance(dataset, dict) else dataset
    assert {(i["origin"], i["licence"]) for i in images} == {("uploaded", "CC-BY-4.0")}
    await chat.close()
