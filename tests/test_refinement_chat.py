"""Uploads, the settings panel and the refinement commands, through the real app.

The app runs in a subprocess; files go through Chainlit's real upload endpoint and the
panel through its real `chat_settings_change` event, as the browser sends them.
"""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from PIL import Image

from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 1 if mode == "1" else (10, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _images(app) -> list[dict]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM images ORDER BY created_at, rowid").fetchall()
    return [dict(row) | {"parameters": json.loads(row["parameters"])} for row in rows]


def _steps(app, thread_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        return db.execute(
            "SELECT type, output FROM steps WHERE thread_id = ? ORDER BY created_at",
            (thread_id,),
        ).fetchall()


async def _chat(app) -> ChatSession:
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    return chat


async def test_uploaded_image_is_recorded_and_edited(make_app, fake_openai):
    app = make_app()
    chat = await _chat(app)
    upload = _png(1024, 1024)
    ref = chat.upload("cat.png", upload, "image/png")
    reply = outputs(await chat.send("make it bluer", files=[ref]))
    assert any("Saved 1 upload(s)" in text for text in reply), reply
    images = _images(app)
    assert [i["backend"] for i in images] == ["upload", "openai"]
    uploaded, edited = images
    assert uploaded["parameters"]["filename"] == "cat.png" and edited["parent_id"] == uploaded["id"]
    sent = fake_openai.requests_to("/images/edits")[0].form["image"][0]["data"]
    assert Image.open(io.BytesIO(sent)).size == (1024, 1024)
    # Upload alone: acknowledged, and the agent is not called.
    before = len(fake_openai.requests_to("/chat/completions"))
    reply = outputs(await chat.send("", files=[chat.upload("b.png", _png(64, 64), "image/png")]))
    assert any("Say what to do with it" in text for text in reply)
    assert len(fake_openai.requests_to("/chat/completions")) == before
    await chat.close()


@pytest.mark.parametrize(
    ("filename", "data", "words"),
    [
        ("notes.png", b"this is not an image at all", "not an image that can be read"),
        ("bomb.png", _png(9000, 9000, "1"), "too large"),
    ],
)
async def test_bad_uploads_are_refused_and_the_message_kept(make_app, filename, data, words):
    app = make_app()
    chat = await _chat(app)
    reply = outputs(await chat.send("edit this", files=[chat.upload(filename, data, "image/png")]))
    assert any(filename in text and words in text for text in reply), reply
    assert _images(app) == []
    await wait_until(  # Chainlit writes steps from a background queue
        lambda: ("user_message", "edit this") in _steps(app, chat.thread_id),
        5,
        "the user's message saved as a step",
    )
    await chat.close()


async def test_settings_panel_applies_next_request_and_survives_resume(make_app, fake_openai):
    app = make_app()
    chat = await _chat(app)
    widgets = {widget["id"]: widget for widget in chat.panel()}
    offered = [item["value"] for item in widgets["backend"]["items"]]
    assert offered[0] == "openai" and widgets["backend"]["initial"] == "openai"
    assert {"model", "size", "quality", "steps", "guidance", "seed"} <= set(widgets)
    await chat.send("/image a first lighthouse")
    reply = outputs(await chat.change_settings({"backend": "openai", "quality": "low", "seed": ""}))
    assert any("quality low" in text for text in reply), reply
    await chat.send("/image a lighthouse")
    assert fake_openai.requests_to("/images/generations")[-1].json["quality"] == "low"

    reply = outputs(await chat.change_settings({"backend": "openai", "seed": "not-a-number"}))
    assert any("Seed must be a whole number" in t and "previous settings" in t for t in reply)
    await chat.send("/image another lighthouse")
    assert fake_openai.requests_to("/images/generations")[-1].json["quality"] == "low"
    reply = outputs(await chat.change_settings({"backend": "openai", "size": "512x512"}))
    assert any("Valid sizes: 1024x1024" in text for text in reply), reply
    await chat.close()

    resumed = ChatSession(app.base_url, chat.cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    assert {w["id"]: w for w in resumed.panel()}["quality"]["initial"] == "low"
    await resumed.send("/image a lighthouse after resume")
    assert fake_openai.requests_to("/images/generations")[-1].json["quality"] == "low"
    reply = outputs(await resumed.send("/backend replicate"))
    assert any("REPLICATE_API_TOKEN" in text for text in reply), reply
    await resumed.close()


async def test_commands_run_the_refinement_loop_with_short_ids(make_app, fake_openai):
    app = make_app()
    chat = await _chat(app)
    await chat.send("/image a paper boat --seed 3")
    first = _images(app)[0]
    await chat.send("/edit make the water green")
    await chat.send(f"/variations {first['id'][:8]} --n 2")
    reply = outputs(await chat.send(f"/fork {first['id'][:8]} --size 1024x1536"))
    assert any("1024×1536" in text for text in reply), reply
    images = _images(app)
    assert [i["parent_id"] for i in images] == [None] + [first["id"]] * 4
    assert outputs(await chat.send("/styles"))[-1].count("- `") == 5
    reply = outputs(await chat.send("/refine a teapot --style line-art"))
    assert any("**Original:** a teapot" in text for text in reply), reply
    # The chat model rewrote it (the fake answers "Refined: ..."), told the style's words.
    assert _images(app)[-1]["prompt_sent"].startswith("Refined: a teapot")
    rewrite = fake_openai.requests_to("/chat/completions")[-1].json["messages"][0]["content"]
    assert "clean black ink line art" in rewrite
    for bad, words in [
        ("/variations --n lots", "takes a whole number"),
        ("/fork zzzz", "None of your images has an id starting with"),
        ("/edit", "Say what to change"),
        ("/image a cat --size 999x999", "Valid sizes"),
        ("/image a cat --n 101", "at most 100 images"),
        (
            "/image a cat --backend local:some/model-that-does-not-exist",
            "Could not download or load the model 'some/model-that-does-not-exist'",
        ),
    ]:
        reply = outputs(await chat.send(bad))
        assert any(words in text for text in reply), (bad, reply)
    await chat.close()
