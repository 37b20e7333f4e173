"""The local diffusers backend through the real app: tiny random-weight model from disk.

Switching the conversation to the local backend, a progress bar while it runs, the same
seed giving the same pixels, img2img on an earlier image, and stop cancelling the job.
"""

from __future__ import annotations

import io
import sqlite3

import pytest
from PIL import Image

from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.waiting import wait_until

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

    def texts() -> list[str]:
        return [d.get("output") or "" for e, d in chat.events if isinstance(d, dict)]

    # Stopped while it denoises. A pipeline still loading cannot be interrupted, and the
    # device is not free until it returns: under load that alone took over 10 s.
    await wait_until(
        lambda: any("⏳" in text and "denoising" in text for text in texts()),
        60,
        "the job's progress bar, denoising",
    )
    stopped_at = len(chat.events)
    await chat.sio.emit("stop")
    # Generous bounds: a loaded CI (three test workers, browsers and torch on 2 cores) once
    # took over 10 s here. Had the job not stopped it would store an image (checked below).
    await wait_until(
        lambda: any(e == "task_end" for e, _ in chat.events[stopped_at:]), 30, "the turn to end"
    )
    await wait_until(
        lambda: any("Stopped by the user" in text for text in texts()), 30, "the stop notice"
    )
    assert _images(app) == []
    # The device is free again: the next job runs (the stopped one did not block it), and
    # the stopped one never saved an image, before or after it.
    await chat.send("/image a quick one --size 64x64 --steps 2")
    await wait_until(lambda: _images(app), 20, "the next image saved")
    assert len(_images(app)) == 1
    await chat.close()
