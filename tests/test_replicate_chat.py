"""Replicate through the real app: switch per conversation, draw, edit via flux-kontext.

The app subprocess talks to the fake Replicate server with the real `replicate` client;
the agent's LLM is the fake OpenAI server.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


def _images(app) -> list[sqlite3.Row]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM images ORDER BY created_at, rowid").fetchall()


async def test_switch_to_replicate_draw_and_edit(make_app, fake_replicate):
    app = make_app(
        REPLICATE_API_TOKEN=fake_replicate.api_token,
        REPLICATE_BASE_URL=fake_replicate.base_url,
        ATELIER_FETCH_ALLOW_HOSTS=fake_replicate.fetch_allow,
        ATELIER_REPLICATE_POLL_INTERVAL="0.05",
    )
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    reply = outputs(await chat.send("/backend replicate"))
    assert any("Replicate `black-forest-labs/flux-schnell`" in text for text in reply), reply

    await chat.send("draw a lighthouse at dusk")  # through the agent (fake LLM)
    created = fake_replicate.creates()
    assert created[-1].path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert created[-1].json["input"]["prompt"] == "draw a lighthouse at dusk"

    # flux-schnell cannot edit, so edit_image switches to the backend's edit model.
    await chat.send("make it bluer")
    created = fake_replicate.creates()
    assert created[-1].path == "/v1/models/black-forest-labs/flux-kontext-pro/predictions"
    assert created[-1].json["input"]["input_image"].startswith("data:image/png;base64,")
    first, edited = _images(app)
    assert (first["backend"], first["model"]) == ("replicate", "black-forest-labs/flux-schnell")
    assert first["seed"] is not None  # a seed is always drawn and recorded
    assert first["cost_usd"] == pytest.approx(0.003)  # flux-schnell's per-image price
    assert edited["parent_id"] == first["id"]
    assert edited["model"] == "black-forest-labs/flux-kontext-pro"

    reply = outputs(await chat.send("/image a cat --backend replicate:not a model"))
    assert any("owner/name" in text for text in reply), reply
    await chat.close()
