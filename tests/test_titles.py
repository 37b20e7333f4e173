"""Conversation titles from meaning (issue 15): the prompt without its command and
options, or the chat model's short title for a long message; never over a user's name.

The rules are checked in-process; the whole app (a subprocess, the fake OpenAI server as
its chat model) shows the title in the sidebar's list, written after the reply.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from chat_app.commands import CHAT_COMMANDS
from chat_app.titles import (
    COMMAND_TITLES,
    MAX_TITLE,
    from_message,
    name_conversation,
    needs_model,
    tidy,
)
from memory.thread_titles import name_of, rename_if_unchanged
from tests.app_process import AppProcess
from tests.chat_client import ChatSession, connected_session, outputs
from tests.db_fixtures import *  # noqa: F403 (fixtures: a fresh database per test)
from tests.fakes.openai_server import Reply, default_brain
from tests.waiting import wait_until

LONG = (
    "please paint me a lighthouse at dusk, seen from the sea, with warm light in its "
    "windows and gulls circling the lamp"
)
TITLE = "Lighthouse at dusk"


@pytest.mark.parametrize(
    ("text", "command", "title"),
    [
        ("/image a fox --n 4 --size 1024x1024", None, "a fox"),
        ("a fox --n 4", "image", "a fox"),  # the `/image` chip, options typed after it
        ("/IMAGE  a fox in the snow ", None, "a fox in the snow"),
        ("/edit make the sky bluer --image 1a2b3c4d", None, "make the sky bluer"),
        ("/refine a red apple --style crayon", None, "a red apple"),
        ("", "cost", "Spending report"),
        ("/help", None, "Help"),
        ("/train status", None, "Training status"),
        ("/estimate 20 --quality high", None, "Price a request first"),
        ("/curate --images 1a2b3c4d,5e6f7a8b --keep 1", None, "Best of N"),
        ("draw a red fox in the snow", None, "draw a red fox in the snow"),
    ],
)
def test_a_command_is_titled_by_its_prompt_or_what_it_does(text, command, title):
    assert from_message(text, command) == title


def test_every_chat_command_has_a_title():
    assert set(COMMAND_TITLES) == {command.name for command in CHAT_COMMANDS}


def test_a_long_message_is_cut_at_a_word_and_left_to_the_chat_model():
    title = from_message(f"/image {LONG} --n 2")
    assert len(title) <= MAX_TITLE and title.endswith("…")
    assert LONG.startswith(title[:-1]) and "--n" not in title
    assert needs_model(LONG) and not needs_model("/image a fox --n 4 --size 1024x1024")


def test_a_model_title_is_shown_without_quotes_labels_or_full_stop():
    assert tidy('Title: "Lighthouse at dusk."\n') == TITLE
    assert tidy("**Lighthouse at dusk**") == TITLE


async def test_a_title_replaces_only_the_expected_name_of_ones_own_thread(
    engine, data_layer, users, requester
):
    alice = await users.add("alice", "password-for-alice")
    bob = await users.add("bob", "password-for-bob")
    requester.act_as(alice)
    thread_id = str(uuid.uuid4())
    await data_layer.update_thread(thread_id, name="/image a fox --n 4", user_id=alice.id)

    assert not await rename_if_unchanged(  # someone else's: untouched
        engine, thread_id, bob.id, expected="/image a fox --n 4", name="a fox"
    )
    assert await name_of(engine, thread_id, bob.id) is None
    assert await rename_if_unchanged(
        engine, thread_id, alice.id, expected="/image a fox --n 4", name="a fox"
    )
    await data_layer.update_thread(thread_id, name="My fox")  # the user renames it
    assert not await rename_if_unchanged(
        engine, thread_id, alice.id, expected="a fox", name="Fox in the snow"
    )
    assert await name_of(engine, thread_id, alice.id) == "My fox"


async def test_a_command_chip_is_titled_even_when_chainlit_names_the_thread_late(
    engine, data_layer, users, requester
):
    """On a busy server the title's task can start before Chainlit's own first naming
    of the conversation is written; it waits for it instead of giving up (which left a
    conversation opened from the `/` menu out of the sidebar)."""
    alice = await users.add("alice", "password-for-alice")
    requester.act_as(alice)
    thread_id = str(uuid.uuid4())
    told: list[tuple[str, dict[str, Any]]] = []

    class Emitter:
        async def emit(self, event: str, data: dict[str, Any]) -> None:
            told.append((event, data))

    runtime = SimpleNamespace(engine=engine, services=SimpleNamespace(rewrite=None))
    titling = asyncio.create_task(
        name_conversation(runtime, Emitter(), alice.id, thread_id, "", "cost")  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.6)  # Chainlit's write comes later (not a timing assertion)
    assert not titling.done()
    await data_layer.update_thread(thread_id, name="", user_id=alice.id)
    await asyncio.wait_for(titling, 30)
    assert await name_of(engine, thread_id, alice.id) == "Spending report"
    shown = {"interaction": "Spending report", "thread_id": thread_id}
    assert told == [("first_interaction", shown)]


# ------------------------------------------------------------------------ the whole app


def _is_title_call(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
    system = messages[0].get("content") if messages else ""
    return not tools and isinstance(system, str) and "short title" in system


def _title_calls(fake) -> list[Any]:
    return [
        r for r in fake.requests_to("/chat/completions") if _is_title_call(r.json["messages"], [])
    ]


def _name(app: AppProcess, cookie: str, thread_id: str) -> str | None:
    threads = httpx.post(
        f"{app.base_url}/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        headers={"Cookie": cookie},
        timeout=30,
    ).json()["data"]
    return next((t["name"] for t in threads if t["id"] == thread_id), None)


@pytest.mark.slow
async def test_the_sidebar_shows_the_prompt_not_the_command(make_app, fake_openai):
    app = make_app()
    chat = await connected_session(app.base_url)
    reply = outputs(await chat.send("/image a fox in the snow --size 1024x1024"))
    assert any("Image for" in text for text in reply), reply
    await wait_until(
        lambda: _name(app, chat.cookie, chat.thread_id) == "a fox in the snow",
        20,
        "the cleaned prompt as the title",
    )
    # The open page is told to reload its list, and a short prompt cost no model call.
    told = ("first_interaction", {"interaction": "a fox in the snow", "thread_id": chat.thread_id})
    await wait_until(lambda: told in chat.events, 20, "the sidebar to be told")
    assert _title_calls(fake_openai) == []
    await chat.close()


@pytest.mark.slow
async def test_a_long_first_message_is_titled_by_the_chat_model_once(make_app, fake_openai):
    def brain(messages, tools):
        if _is_title_call(messages, tools):
            return Reply(content=f'"{TITLE}."')
        return default_brain(messages, tools)

    fake_openai.brain = brain
    app = make_app()
    chat = await connected_session(app.base_url)
    await chat.send(LONG)
    await wait_until(
        lambda: _name(app, chat.cookie, chat.thread_id) == TITLE, 30, "the model's title"
    )
    [call] = _title_calls(fake_openai)
    assert call.json["messages"][-1]["content"] == LONG  # the message, and no tools
    assert not call.json.get("tools")
    await chat.send(LONG + " again")  # a later message changes nothing
    await chat.close()

    resumed = ChatSession(app.base_url, chat.cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    await resumed.send(LONG + ", a third time")
    await resumed.close()
    app.stop()  # every background task done
    assert len(_title_calls(fake_openai)) == 1
    rows = [r for r in app.log().splitlines() if "conversation_title" in r]
    assert not any("failed" in row for row in rows), rows


@pytest.mark.slow
async def test_a_name_the_user_gave_is_never_replaced(make_app, fake_openai):
    asked, answer = threading.Event(), threading.Event()

    async def brain(messages, tools):
        if _is_title_call(messages, tools):
            asked.set()
            await asyncio.to_thread(answer.wait, 60)  # until the user has renamed it
            return Reply(content=TITLE)
        return default_brain(messages, tools)

    fake_openai.brain = brain
    app = make_app()
    chat = await connected_session(app.base_url)
    await chat.send(LONG)
    await wait_until(asked.is_set, 30, "the title request")
    renamed = httpx.put(
        f"{app.base_url}/project/thread",
        json={"threadId": chat.thread_id, "name": "My lighthouse"},
        headers={"Cookie": chat.cookie},
        timeout=30,
    )
    assert renamed.status_code == 200, renamed.text
    answer.set()
    await wait_until(
        lambda: "conversation_title_kept" in app.log(), 30, "the model's title to be dropped"
    )
    assert _name(app, chat.cookie, chat.thread_id) == "My lighthouse"
    await chat.close()
