"""The local diffusers backend through the real app: tiny random-weight model from disk.

Switching the conversation to the local backend, a progress bar while it runs, the same
seed giving the same pixels, img2img on an earlier image, and stop cancelling the job.
"""

from __future__ import annotations

import asyncio
import io
import sqlite3

import pytest
from PIL import Image

from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


def _images(app) -> list[sqlite3.Row]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM images ORDER BY created_at, rowid").fetchall()


def _pixels(app, row: sqlite3.Row) -> bytes:
    key = row["media_key"]
    data = (app.data_dir / "media" / key[:2] / key[2:4] / key).read_bytes()
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


@pytest.fixture
def local_app(make_app, tiny_sd_dir):
    return make_app(ATELIER_LOCAL_MODEL=str(tiny_sd_dir))


async def _chat(app) -> ChatSession:
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    return chat


async def test_local_backend_in_the_chat(local_app):
    app = local_app
    chat = await _chat(app)
    reply = outputs(await chat.send("/backend local"))
    assert any("Local diffusers" in text for text in reply), reply
    await chat.send("/image a small red house --seed 7 --size 64x64 --steps 12")
    progress = [
        data.get("output", "")
        for event, data in chat.events
        if event in ("new_message", "update_message") and "⏳" in (data.get("output") or "")
    ]
    assert progress, "no progress bar was shown"
    await chat.send("/image a small red house --seed 7 --size 64x64 --steps 12")
    await chat.send("/image a small red house --seed 8 --size 64x64 --steps 12")
    first, same, other = _images(app)
    assert (first["seed"], same["seed"], other["seed"]) == (7, 7, 8)
    assert _pixels(app, first) == _pixels(app, same) != _pixels(app, other)
    # img2img from the first image, recorded as its child.
    await chat.send(f"/edit make it look older --image {first['id'][:8]} --strength 0.5")
    edited = _images(app)[-1]
    assert edited["parent_id"] == first["id"] and edited["backend"] == "local"
    await chat.close()


async def test_stop_cancels_a_running_local_job(local_app):
    app = local_app
    chat = await _chat(app)
    await chat.send("/backend local")
    message = chat.sio.emit(
        "client_message",
        {
            "message": {
                "id": "6f1e4c1e-1c1a-4d8e-9a57-0d6c1c0b7a01",
                "threadId": chat.thread_id,
                "type": "user_message",
                "name": "user",
                "output": "/image a long job --size 256x256 --steps 150",
                "createdAt": "2026-11-22T00:00:00Z",
            },
            "fileReferences": None,
        },
    )
    await message
    for _ in range(400):  # wait until the job is running (a progress bar appears)
        if any("⏳" in (d.get("output") or "") for e, d in chat.events if isinstance(d, dict)):
            break
        await asyncio.sleep(0.05)
    stopped_at = len(chat.events)
    await chat.sio.emit("stop")
    for _ in range(200):
        if any(e == "task_end" for e, _ in chat.events[stopped_at:]):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    assert _images(app) == []
    texts = [d.get("output") or "" for e, d in chat.events if isinstance(d, dict)]
    assert any("Stopped by the user" in text for text in texts), texts[-5:]
    # The device is free again: the next job runs (the stopped one did not block it).
    await chat.send("/image a quick one --size 64x64 --steps 2")
    for _ in range(200):
        if _images(app):
            break
        await asyncio.sleep(0.1)
    assert len(_images(app)) == 1
    await chat.close()
