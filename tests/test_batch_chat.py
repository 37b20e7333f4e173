"""Batches through the real app: /batch with a typed list and with an attached .csv.

The app runs as a subprocess against the fake OpenAI (images answer after a delay, so
the progress message is seen moving); one item's prompt makes the fake answer 500, so
it fails with its reason. Asserted where a person would look: the question asked once,
the progress message updated in place (paused, then running again), the summary with
its contact sheet and links, the zip's manifest against the database; another account
gets 404 from the routes and "No batch with id" from /batch pause. A list that is bad,
too long or names an unknown style is refused before anything is stored or held.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile

import httpx
import pytest

from chat_app.batch_display import PAUSE, RESUME, STOP
from chat_app.spending_prompts import CONFIRM
from tests.app_process import ADMIN_PASSWORD, AppProcess, add_user, app_rows
from tests.chat_client import ChatSession, connected_session, login_cookie, outputs
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

BOB_PASSWORD = "bob-password-for-tests-1"


def _batches(app: AppProcess) -> list[dict]:
    return [dict(row) for row in app_rows(app, "SELECT * FROM batches ORDER BY created_at")]


def _items(app: AppProcess, batch_id: str) -> list[dict]:
    sql = f"SELECT * FROM batch_items WHERE batch_id = '{batch_id}' ORDER BY position"
    return [dict(row) for row in app_rows(app, sql)]


def _texts(chat: ChatSession, message_id: str) -> list[str]:
    """Every text the message showed, in order (sent, then each update)."""
    return [
        data.get("output") or ""
        for event, data in chat.events
        if event in ("new_message", "update_message")
        and isinstance(data, dict)
        and data.get("id") == message_id
    ]


async def _status(app: AppProcess, batch_id: str, wanted: str) -> None:
    def reached() -> bool:
        return any(b["id"] == batch_id and b["status"] == wanted for b in _batches(app))

    await wait_until(reached, 60, f"the batch to be {wanted}")


async def test_a_typed_batch_runs_pauses_resumes_and_ends_with_its_zip(make_app, fake_openai):
    app = make_app(ATELIER_MAX_RETRIES="0", ATELIER_BATCH_ERROR_RETRIES="1")
    fake_openai.latency_s = 0.4
    chat = await connected_session(app.base_url)
    chat.ask_answer = CONFIRM
    typed = "/batch --size 1024x1024\napple\n- red bicycle\nFAIL_SERVER kettle\ncat\npear\nfig"
    reply = outputs(await chat.send(typed))
    [question] = chat.asks
    asked = json.dumps(question)
    assert "Start the batch" in asked and "6 item(s)" in asked and "Estimated cost" in asked
    assert any("Batch `" in text and "started: 6 item(s)" in text for text in reply), reply
    [batch] = _batches(app)
    short = batch["id"][:8]
    items = _items(app, batch["id"])
    assert [i["label"] for i in items] == [
        "apple", "red bicycle", "FAIL_SERVER kettle", "cat", "pear", "fig"
    ]  # fmt: skip
    assert {i["template"] for i in items} >= {"food", "vehicle", "animal"}
    assert "white background" in items[0]["prompt_sent"].lower()

    await chat.send(f"/batch pause {short}")
    await _status(app, batch["id"], "paused")
    await wait_until(
        lambda: any("Paused" in t for t in _texts(chat, batch["message_id"])),
        30,
        "the progress message to say paused",
    )
    # The same thread opened in another page: the buttons are there again (Chainlit
    # keeps none), for the paused state.
    viewer = ChatSession(app.base_url, chat.cookie)
    await viewer.connect(resume_thread=chat.thread_id)
    await wait_until(
        lambda: (
            [d["name"] for e, d in viewer.events if e == "action"] == ["batch_resume", "batch_stop"]
        ),
        20,
        "Resume and Stop on the resumed page",
    )
    await viewer.close()
    await chat.send(f"/batch resume {short}")
    await _status(app, batch["id"], "done")
    await wait_until(
        lambda: any("Batch finished" in t for t in _texts(chat, batch["message_id"])),
        30,
        "the summary in the progress message",
    )
    texts = _texts(chat, batch["message_id"])
    assert any("done" in t and "running" in t and "waiting" in t for t in texts), texts
    final = texts[-1]
    assert "5 of 6 done, 1 failed" in final, final
    assert "FAIL_SERVER kettle: Provider error" in final
    assert f"/batches/{batch['id']}/download" in final and f"batch={batch['id']}" in final
    sheets = [e["name"] for e in chat.elements if e.get("forId") == batch["message_id"]]
    assert sheets == [f"contact-sheet-{short}.png"], chat.elements
    # Shown live: not told again on return.
    await wait_until(lambda: _batches(app)[0]["told_at"], 10, "the batch marked told")

    # The zip: the final images and a manifest row per attempt, as the database says.
    cookies = {"Cookie": chat.cookie}
    zipped = httpx.get(f"{app.base_url}/batches/{batch['id']}/download", headers=cookies)
    assert zipped.status_code == 200, zipped.text
    archive = zipfile.ZipFile(io.BytesIO(zipped.content))
    rows = list(csv.DictReader(io.StringIO(archive.read("manifest.csv").decode("utf-8-sig"))))
    items = _items(app, batch["id"])
    attempts = sum(len(json.loads(i["attempts"])) for i in items)
    assert len(rows) == attempts
    assert {r["label"] for r in rows} == {i["label"] for i in items}
    images = [name for name in archive.namelist() if name.endswith(".png")]
    assert len(images) == sum(len(json.loads(i["image_ids"])) for i in items) == 5
    status = httpx.get(f"{app.base_url}/batches/{batch['id']}", headers=cookies).json()
    assert status["counts"] == {"pending": 0, "running": 0, "done": 5, "failed": 1}
    sheet = httpx.get(f"{app.base_url}/batches/{batch['id']}/contact-sheet", headers=cookies)
    assert sheet.headers["content-type"] == "image/png" and sheet.content[:4] == b"\x89PNG"

    # Someone else: not found, in the same words as an id that does not exist.
    add_user(app, "bob", BOB_PASSWORD)
    bob_cookie = login_cookie(app.base_url, "bob", BOB_PASSWORD)
    for path in ("/download", "/contact-sheet", ""):
        answer = httpx.get(
            f"{app.base_url}/batches/{batch['id']}{path}", headers={"Cookie": bob_cookie}
        )
        assert answer.status_code == 404, (path, answer.text)
    bob = ChatSession(app.base_url, bob_cookie)
    await bob.connect()
    said = "\n".join(outputs(await bob.send(f"/batch pause {batch['id']}")))
    assert f"No batch with id {batch['id']}" in said, said
    # The progress message's buttons, forged with alice's batch id: each is refused
    # as not bob's (an owner check missing would answer "already done" instead).
    for name in (PAUSE, RESUME, STOP):
        seen = len(bob.order)
        action = {"name": name, "payload": {"batch_id": batch["id"]}, "label": "x", "id": name}
        pressed = httpx.post(
            f"{app.base_url}/project/action",
            json={"sessionId": bob.session_id, "action": {**action, "forId": None}},
            headers={"Cookie": bob_cookie},
            timeout=30,
        )
        assert pressed.status_code == 200, pressed.text

        def refused(seen: int = seen) -> bool:
            later = outputs([bob.messages[i] for i in bob.order[seen:]])
            return any(f"No batch with id {batch['id']}" in text for text in later)

        await wait_until(refused, 30, f"the forged {name} to be refused")
    assert _batches(app)[0]["status"] == "done"
    await bob.close()
    await chat.close()


async def test_an_attached_csv_sets_each_rows_options(make_app):
    app = make_app()
    chat = await connected_session(app.base_url)
    chat.ask_answer = CONFIRM
    table = "object,count,size\nteapot,2,1024x1024\nsailing boat,1,1536x1024\n"
    ref = chat.upload("objects.csv", table.encode(), "text/csv")
    reply = outputs(await chat.send("/batch", files=[ref]))
    assert any("started: 2 item(s)" in text for text in reply), reply
    [batch] = _batches(app)
    await _status(app, batch["id"], "done")
    items = _items(app, batch["id"])
    assert [(i["label"], i["count"], i["size"]) for i in items] == [
        ("teapot", 2, "1024x1024"),
        ("sailing boat", 1, "1536x1024"),
    ]
    made = app_rows(app, "SELECT width, height FROM images WHERE batch_id IS NOT NULL")
    assert sorted((r["width"], r["height"]) for r in made) == [
        (1024, 1024), (1024, 1024), (1536, 1024)
    ]  # fmt: skip
    await chat.close()


async def test_bad_lists_are_refused_and_nothing_is_held(make_app):
    app = make_app(ATELIER_BATCH_MAX_ITEMS="3")
    chat = await connected_session(app.base_url)
    chat.ask_answer = CONFIRM
    refusals = {
        "/batch": "Give the objects",
        "/batch apple, pear, fig, plum": "at most 3",
        "/batch apple, pear --style nosuchstyle": "There is no style 'nosuchstyle'",
        "/batch apple --template nosuchtemplate": "no object template",
        "/batch apple --size 13x13": "item 1",
    }
    for typed, why in refusals.items():
        said = "\n".join(outputs(await chat.send(typed)))
        assert why in said, (typed, said)
    bad = chat.upload("bad.csv", b"object,count\napple,two\n", "text/csv")
    said = "\n".join(outputs(await chat.send("/batch", files=[bad])))
    assert "count" in said and "2" in said, said  # the row and the column to fix
    assert chat.asks == []  # nothing was even asked
    assert app_rows(app, "SELECT * FROM batches") == []
    assert app_rows(app, "SELECT * FROM ledger_entries") == []
    await chat.close()


async def test_a_batch_continues_after_a_restart_and_is_told_on_return(make_app, fake_openai):
    """The user leaves; the app restarts mid-batch; the batch finishes unseen; the user
    opens the conversation again and finds its summary and contact sheet, once."""
    app = make_app()
    fake_openai.latency_s = 0.5
    chat = await connected_session(app.base_url)
    chat.ask_answer = CONFIRM
    await chat.send("/batch apple, pear, fig, plum, lemon, lime, kiwi, mango, melon, date")
    [batch] = _batches(app)
    await wait_until(
        lambda: any(i["status"] == "done" for i in _items(app, batch["id"])),
        30,
        "a first item done",
    )
    await chat.close()
    app.restart()
    await _status(app, batch["id"], "done")
    items = _items(app, batch["id"])
    assert [i["status"] for i in items] == ["done"] * 10
    assert len(app_rows(app, "SELECT id FROM images WHERE batch_id IS NOT NULL")) == 10
    back = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await back.connect(resume_thread=chat.thread_id)
    await wait_until(
        lambda: any("Batch finished" in (m.get("output") or "") for m in back.messages.values()),
        30,
        "the summary told on return",
    )
    await wait_until(
        lambda: any(e.get("name", "").startswith("contact-sheet-") for e in back.elements),
        30,
        "the contact sheet told on return",
    )
    [told] = [m for m in back.messages.values() if "Batch finished" in (m.get("output") or "")]
    assert "10 of 10 done, 0 failed" in told["output"]
    assert _batches(app)[0]["told_at"] is not None
    await back.close()
    again = ChatSession(app.base_url, back.cookie)
    await again.connect(resume_thread=chat.thread_id)
    steps = [s.get("output") or "" for s in again.resumed["steps"]]
    assert sum("Batch finished" in text for text in steps) == 1  # kept, and told once
    await again.close()


async def test_a_list_without_batch_in_command_mode_says_how(make_app):
    """No chat model: a .csv sent with words but no command is not a prompt."""
    app = make_app(OPENAI_API_KEY="")
    chat = await connected_session(app.base_url)
    ref = chat.upload("objects.csv", b"object\nteapot\n", "text/csv")
    said = "\n".join(outputs(await chat.send("make these", files=[ref])))
    assert "Received objects.csv as a list" in said and "`/batch`" in said, said
    assert app_rows(app, "SELECT * FROM images") == []
    await chat.close()


async def test_a_page_opened_on_an_adopted_batch_shows_it_live(make_app, fake_openai):
    """After a restart the batch runs on with nobody watching; a page opened on its
    conversation meanwhile shows its progress live, then its summary, in the same
    message (not a stale count from before the restart)."""
    app = make_app()
    fake_openai.latency_s = 1.0
    chat = await connected_session(app.base_url)
    chat.ask_answer = CONFIRM
    await chat.send("/batch " + ", ".join(f"thing {n}" for n in range(40)))
    [batch] = _batches(app)
    await wait_until(
        lambda: any(i["status"] == "done" for i in _items(app, batch["id"])),
        30,
        "a first item done",
    )
    await chat.close()
    app.restart()
    back = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await back.connect(resume_thread=chat.thread_id)
    await wait_until(
        lambda: any("running" in t for t in _texts(back, batch["message_id"])),
        30,
        "live progress after the restart",
    )
    await wait_until(
        lambda: any("Batch finished" in t for t in _texts(back, batch["message_id"])),
        90,
        "the summary in the progress message",
    )
    assert "40 of 40 done" in _texts(back, batch["message_id"])[-1]
    await back.close()
