"""The refinement loop a person actually goes through, through the real app.

generate → "make it bluer" → "four variations of that" → "go back to the first one and
make it wider": the app runs in a subprocess, the real langchain-openai and openai
clients talk to the fake OpenAI server, and the lineage is read back from the database.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


def _images(app) -> list[dict]:
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, parent_id, prompt_typed, prompt_sent, backend, width, height, "
            "parameters, media_key FROM images ORDER BY created_at, rowid"
        ).fetchall()
    return [dict(row) | {"parameters": json.loads(row["parameters"])} for row in rows]


async def test_generate_edit_variations_fork_lineage(make_app, fake_openai):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()

    await chat.send("draw a fox in the snow")
    reply = outputs(await chat.send("make it bluer"))
    assert any("Before" in text and "after" in text for text in reply), reply
    await chat.send("four variations of that")
    await chat.send("go back to the first one and make it wider")
    await chat.close()

    images = _images(app)
    assert len(images) == 1 + 1 + 4 + 1, [i["prompt_typed"] for i in images]
    first, edited, *variations, fork = images

    assert first["parent_id"] is None and first["prompt_sent"] == "draw a fox in the snow"
    assert edited["parent_id"] == first["id"]
    assert edited["prompt_typed"] == "make it bluer"
    assert edited["parameters"]["lineage"]["operation"] == "edit"
    assert edited["parameters"]["inputs"]["images"] == [first["id"]]
    # The edit really sent the first image's stored file as multipart.
    edits = fake_openai.requests_to("/images/edits")
    key = first["media_key"]
    stored_first = app.data_dir / "media" / key[:2] / key[2:4] / key
    assert edits[0].form["image"][0]["data"] == stored_first.read_bytes()

    assert {v["parent_id"] for v in variations} == {edited["id"]}
    assert {v["parameters"]["lineage"]["operation"] for v in variations} == {"variations"}
    # Variations of an edit re-run the edit on the same source, not a text prompt.
    assert len(edits) == 2 and edits[1].form["n"] == ["4"]
    assert edits[1].form["image"][0]["data"] == stored_first.read_bytes()

    assert fork["parent_id"] == first["id"]
    assert (fork["width"], fork["height"]) == (1536, 1024)
    assert fork["prompt_sent"] == first["prompt_sent"]
    assert fork["parameters"]["lineage"] == {
        "operation": "fork",
        "source": first["id"],
        "changed": {"size": "1536x1024"},
    }
