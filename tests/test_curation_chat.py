"""Curation end to end: the agent curates, the user overrules, the thread resumes.

The app runs in a subprocess with the real CLIP code path on a tiny random-weight CLIP
from disk; the fake OpenAI server draws DISC_TEST candidates with known answers.
"""

from __future__ import annotations

import pytest

from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


async def test_curate_overrule_and_resume(make_app, tiny_clip_dir):
    app = make_app(ATELIER_CLIP_MODEL=str(tiny_clip_dir))
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    reply = outputs(await chat.send("best of 4 crayon apples DISC_TEST"))
    grid = next(text for text in reply if "Curated 4 candidate(s)" in text)
    assert "clip" in grid and "Why the others lost" in grid
    images = [e for e in chat.elements if e.get("type") == "image"]
    assert len(images) == 4 and {e["size"] for e in images} == {"small"}

    candidates = app_rows(
        app,
        "SELECT c.image_id, c.rank, c.verdict, c.decided_by, i.created_at FROM "
        "curation_candidates c JOIN images i ON i.id = c.image_id ORDER BY c.rank",
    )
    made = sorted(candidates, key=lambda row: row["created_at"])
    kept = [row for row in candidates if row["verdict"] == "kept"]
    assert [row["image_id"] for row in kept] == [made[1]["image_id"]]  # the centred disc
    assert f"kept `{kept[0]['image_id'][:8]}`" in grid  # the chat and the database agree
    scores = app_rows(app, "SELECT criterion, count(*) AS n FROM image_scores GROUP BY criterion")
    assert {row["criterion"]: row["n"] for row in scores}["clip"] == 4

    await chat.send("keep the third one instead")
    third = candidates[2]["image_id"]
    verdicts = {
        row["image_id"]: (row["verdict"], row["decided_by"])
        for row in app_rows(app, "SELECT image_id, verdict, decided_by FROM curation_candidates")
    }
    assert verdicts[third] == ("kept", "user")
    assert verdicts[kept[0]["image_id"]] == ("rejected", "user")
    await chat.close()

    resumed = ChatSession(app.base_url, chat.cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    steps = [step.get("output") or "" for step in resumed.resumed["steps"]]
    assert any("Curated 4 candidate(s)" in text for text in steps)
    assert any("is no longer kept" in text for text in steps)
    # The grid comes back in rank order.
    names = [e["name"] for e in resumed.resumed["elements"] if e["type"] == "image"]
    assert names == [f"{row['image_id']}.png" for row in candidates]
    await resumed.close()
