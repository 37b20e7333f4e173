"""End to end over Chainlit's real protocol: the app in a subprocess, the real openai
client inside it talking to the fake OpenAI server, and rows read back from the database.
"""

from __future__ import annotations

import httpx
import pytest

from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


async def test_agent_generates_image_persists_and_remembers_after_restart(make_app, fake_openai):
    app = make_app()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    replies = await chat.send("draw a red fox in the snow")
    text = "\n".join(outputs(replies))
    assert "Image for *draw a red fox in the snow*" in text
    assert "Done. Generated 1 image(s)" in text
    assert chat.elements and chat.elements[0]["type"] == "image"
    await chat.close()

    images = app_rows(app, "select id, prompt_sent, width, height, backend, media_key from images")
    assert len(images) == 1 and images[0][1:5] == (
        "draw a red fox in the snow",
        1024,
        1024,
        "openai",
    )
    image_id, media_key = images[0][0], images[0][5]
    assert (app.data_dir / "media" / media_key[:2] / media_key[2:4] / media_key).exists()

    app.restart()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    threads = httpx.post(
        f"{app.base_url}/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        headers={"Cookie": cookie},
    ).json()["data"]
    assert [t["id"] for t in threads] == [chat.thread_id]
    assert threads[0]["name"] == "draw a red fox in the snow"

    resumed = ChatSession(app.base_url, cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    steps = resumed.resumed["steps"]
    assert [s["type"] for s in steps].count("tool") == 1
    image_elements = [e for e in resumed.resumed["elements"] if e["type"] == "image"]
    assert image_elements and image_elements[0]["url"].startswith(f"/media/{media_key}?")
    served = httpx.get(app.base_url + image_elements[0]["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"

    fake_openai.clear_requests()
    await resumed.send("make the one from before bigger")
    chat_request = fake_openai.requests_to("/chat/completions")[0].json
    system = chat_request["messages"][0]["content"]
    assert image_id in system and "draw a red fox in the snow" in system
    history = [m["content"] for m in chat_request["messages"][1:]]
    assert "draw a red fox in the snow" in history
    generation = fake_openai.requests_to("/images/generations")[0].json
    assert generation["size"] == "1536x1024"
    await resumed.close()
    assert len(app_rows(app, "select id from images")) == 2


async def test_bad_inputs_get_clear_messages_and_nothing_is_lost(make_app):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()

    # An empty message is refused before it is stored: tests/test_first_run_bugs.py.
    long = outputs(await chat.send("x" * 20_000))
    assert any("20,000 characters; the limit is 8,000" in o for o in long)
    unknown = outputs(await chat.send("/teleport now"))
    assert any("Unknown command /teleport" in o and "/image" in o for o in unknown)
    malformed = outputs(await chat.send("this will be malformed"))
    assert any("not valid JSON" in o for o in malformed)
    refused = outputs(await chat.send("/image a FAIL_MODERATION scene"))
    assert any("safety system refused" in o for o in refused)
    quota = outputs(await chat.send("/image FAIL_QUOTA"))
    assert any("run out of credit" in o for o in quota)
    ok = outputs(await chat.send("/image a lighthouse --size 1024x1536"))
    assert any("1024×1536" in o for o in ok)
    bad_size = outputs(await chat.send("/image a lighthouse --size 999x999"))
    assert any("Valid sizes: 1024x1024, 1536x1024, 1024x1536, 2048x2048" in o for o in bad_size)
    assert any("in multiples of 16" in o for o in bad_size)
    await chat.close()

    user_messages_sql = "select output from steps where type='user_message'"
    await wait_until(  # Chainlit writes steps from a background queue
        lambda: len(app_rows(app, user_messages_sql)) >= 7, 10, "the 7 user messages saved"
    )
    user_messages = app_rows(app, user_messages_sql)
    assert len(user_messages) == 7
    assert any(len(o) == 20_000 for (o,) in user_messages)
    assert len(app_rows(app, "select id from images")) == 1


async def test_command_mode_without_llm(make_app, fake_openai):
    app = make_app(ATELIER_LLM_MODEL="", OPENAI_API_KEY="sk-images-only")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    welcome = outputs([chat.messages[i] for i in chat.order])
    assert any("Chat model" in o for o in welcome)
    replies = outputs(await chat.send("a watercolour heron", command="image"))
    assert any("Image for *a watercolour heron*" in o for o in replies)
    await chat.close()


async def test_stream_failure_falls_back_to_a_plain_call(make_app, fake_openai):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    fake_openai.clear_requests()
    fake_openai.fail_next("/chat/completions", status=400, message="streaming is not supported")
    replies = outputs(await chat.send("hello there"))
    assert any("You said: hello there" in o for o in replies)
    calls = [r.json for r in fake_openai.requests_to("/chat/completions")]
    assert [bool(c.get("stream")) for c in calls] == [True, False]
    await chat.close()


async def test_unreachable_chat_model_is_explained(make_app):
    app = make_app(ATELIER_LLM_BASE_URL="http://127.0.0.1:9/v1", ATELIER_MAX_RETRIES="0")
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    replies = outputs(await chat.send("hello"))
    assert any(
        "Could not reach the chat model server at http://127.0.0.1:9/v1" in o for o in replies
    )
    await chat.close()
