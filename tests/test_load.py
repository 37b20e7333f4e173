"""Load: many users at once get every answer, with nothing lost, reordered or failed.

The real app runs as a subprocess against the fake OpenAI (chat model and image API);
each simulated user logs in with POST /login and speaks Chainlit's Socket.IO protocol
(tests/chat_client.py), all at the same time from one event loop. The checks are about
behaviour, never time: every turn answered without an error, every message stored in
the order it was sent (read back from the database the app wrote), every image stored,
shown to the session that asked for it and settled in the ledger, every login accepted,
and no error in the app's log. Users are distinct accounts (per-account limits exist),
created in-process through `UserStore` once the app has migrated its database.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import text

from memory.db import create_engine, session_factory
from memory.users import UserStore
from tests.app_process import AppProcess
from tests.chat_client import ChatSession, outputs
from tests.db_fixtures import db_url  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

T = TypeVar("T")
PASSWORD = "load-test-password"
SESSIONS = 50
TURNS = 10
IMAGE_REQUESTS = 20
LOGINS = 50
TURN_TIMEOUT_S = 240  # one turn, while every other session is busy on a shared machine
STORED_TIMEOUT_S = 5  # the app has stopped: what is not stored now never will be
ERROR_TEXTS = ("Could not do that", "Something went wrong")
LOG_PROBLEMS = ("Traceback", "database is locked", "QueuePool limit", "TimeoutError")


def _names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(count)]


async def _add_users(url: str, names: list[str]) -> None:
    """Accounts in the app's database, as `atelier users add` makes them, without a
    process per user."""
    engine = create_engine(url)
    try:
        store = UserStore(session_factory(engine))
        await asyncio.gather(*(store.add(name, PASSWORD) for name in names))
    finally:
        await engine.dispose()


async def _login(client: httpx.AsyncClient, base_url: str, name: str) -> httpx.Response:
    return await client.post(
        f"{base_url}/login", data={"username": name, "password": PASSWORD}, timeout=120
    )


async def _logins(base_url: str, names: list[str]) -> list[httpx.Response]:
    """POST /login for every name at the same time (one client each, as browsers are)."""

    async def one(name: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await _login(client, base_url, name)

    return await asyncio.gather(*(one(name) for name in names))


def _cookie(response: httpx.Response) -> str:
    response.raise_for_status()
    cookie = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    assert cookie, "login set no cookie"
    return cookie


async def _logged_in(base_url: str, names: list[str]) -> dict[str, str]:
    """Each name's login cookie, all logged in at once."""
    responses = await _logins(base_url, names)
    return {name: _cookie(r) for name, r in zip(names, responses, strict=True)}


async def _each(items: list[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """Run `work` for every item at once; fail naming every item whose work failed."""
    results = await asyncio.gather(*(work(item) for item in items), return_exceptions=True)
    failed = [
        f"{item}: {type(result).__name__}: {result}"
        for item, result in zip(items, results, strict=True)
        if isinstance(result, BaseException)
    ]
    assert not failed, f"{len(failed)} of {len(items)} failed:\n" + "\n".join(failed[:10])
    return results


def _log_problems(app: AppProcess) -> list[str]:
    """Lines of the app's log that show a failure: error records, tracebacks, lock and
    pool errors."""
    problems = []
    for line in app.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        failed = isinstance(record, dict) and (
            record.get("level") in ("error", "critical") or "exception" in record
        )
        if failed or any(marker in line for marker in LOG_PROBLEMS):
            problems.append(line[:400])
    return problems


async def _steps(url: str, thread_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each thread's stored steps, in the order the app shows them on resume."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT thread_id, type, output FROM steps "
                    "ORDER BY thread_id, created_at, position"
                )
            )
            steps: dict[str, list[dict[str, Any]]] = {thread: [] for thread in thread_ids}
            for row in rows.mappings():
                if row["thread_id"] in steps:
                    steps[row["thread_id"]].append(dict(row))
            return steps
    finally:
        await engine.dispose()


async def _rows(url: str, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(row) for row in (await conn.execute(text(sql))).mappings()]
    finally:
        await engine.dispose()


async def _wait_stored_in_order(
    url: str, threads: list[str], sent: list[tuple[str, str]]
) -> dict[str, str]:
    """Why each conversation is not stored as sent; empty once all of them are.

    Chainlit stores steps in background tasks (`Message.send` creates a task for
    `data_layer.create_step`), so a reply can reach the user before it, or the message
    it answers, is stored: wait for the writes to land, then judge what is there.
    """
    deadline = time.monotonic() + STORED_TIMEOUT_S
    while True:
        stored = await _steps(url, threads)
        wrong = {t: why for t in threads if (why := _out_of_order(stored[t], sent))}
        if not wrong or time.monotonic() >= deadline:
            return wrong
        await asyncio.sleep(0.5)


def _turn(n: int) -> tuple[str, str]:
    """The n-th message a session sends and a text its reply contains: commands and
    agent turns, mixed."""
    if n % 3 == 0:
        return "/help", "**Commands**"
    return f"hello {n}", f"You said: hello {n}"


def _out_of_order(steps: list[dict[str, Any]], sent: list[tuple[str, str]]) -> str | None:
    """Why `steps` are not: each sent message, then its reply, in the order sent."""
    users = [(i, s) for i, s in enumerate(steps) if s["type"] == "user_message"]
    typed = [s["output"] for _, s in users]
    if typed != [message for message, _ in sent]:
        return f"user messages stored as {typed}"
    bounds = [i for i, _ in users] + [len(steps)]
    for k, (message, reply) in enumerate(sent):
        between = [s["output"] or "" for s in steps[bounds[k] + 1 : bounds[k + 1]]]
        if not any(reply in output for output in between):
            return f"no reply {reply!r} after {message!r} (before the next); found {between}"
    return None


# --------------------------------------------------------------------------- sessions


@pytest.mark.timeout(600)
async def test_concurrent_sessions_keep_every_message_in_order(db_url, make_app):  # noqa: F811
    app = make_app(ATELIER_DATABASE_URL=db_url)
    names = _names("load", SESSIONS)
    await _add_users(db_url, names)
    cookies = await _logged_in(app.base_url, names)
    sent = [_turn(n) for n in range(TURNS)]

    async def session(name: str) -> ChatSession:
        chat = ChatSession(app.base_url, cookies[name])
        await chat.connect()
        try:
            for message, reply in sent:
                texts = outputs(await chat.send(message, timeout=TURN_TIMEOUT_S))
                assert any(reply in t for t in texts), f"{message!r} got {texts}"
                assert not any(e in t for t in texts for e in ERROR_TEXTS), texts
        finally:
            await chat.close()
        # A write that failed is told as a toast ("Could not save this message...").
        assert [data for event, data in chat.events if event == "toast"] == []
        return chat

    chats: list[ChatSession] = await _each(names, session)

    threads = [chat.thread_id for chat in chats]
    assert len(set(threads)) == SESSIONS
    # Stopped as an operator would, right after the last reply: what Chainlit handed
    # over but had not yet written must be written before the process ends.
    app.stop()
    wrong = await _wait_stored_in_order(db_url, threads, sent)
    assert not wrong, f"{len(wrong)} conversations stored wrongly: {list(wrong.values())[:5]}"
    owners = await _rows(
        db_url, "SELECT t.id, u.identifier FROM threads t JOIN users u ON u.id = t.user_id"
    )
    owner = {row["id"]: row["identifier"] for row in owners}
    assert [owner.get(chat.thread_id) for chat in chats] == names
    assert _log_problems(app) == []


# --------------------------------------------------------------------------- images


@pytest.mark.timeout(600)
async def test_concurrent_image_requests_are_stored_shown_and_settled(make_app, fake_openai):
    app = make_app()
    url = f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}"
    names = _names("painter", IMAGE_REQUESTS)
    await _add_users(url, names)
    cookies = await _logged_in(app.base_url, names)

    async def session(name: str) -> tuple[ChatSession, list[str]]:
        chat = ChatSession(app.base_url, cookies[name])
        chat.ask_answer = "confirm_spend"
        await chat.connect()
        try:
            texts = outputs(await chat.send(f"draw a fox for {name}", timeout=TURN_TIMEOUT_S))
        finally:
            await chat.close()
        assert not any(e in t for t in texts for e in ERROR_TEXTS), texts
        assert any(t.startswith("Done.") for t in texts), texts
        return chat, texts

    results: list[tuple[ChatSession, list[str]]] = await _each(names, session)

    assert len(fake_openai.requests_to("/images/generations")) == IMAGE_REQUESTS
    images = await _rows(
        url,
        "SELECT i.id, i.thread_id, i.prompt_typed, u.identifier FROM images i "
        "JOIN users u ON u.id = i.user_id",
    )
    by_thread = {row["thread_id"]: row for row in images}
    assert len(images) == len(by_thread) == IMAGE_REQUESTS
    entries = {
        row["image_id"]: row
        for row in await _rows(url, "SELECT * FROM ledger_entries WHERE image_id IS NOT NULL")
    }
    assert len(await _rows(url, "SELECT id FROM ledger_entries")) == IMAGE_REQUESTS
    for name, (chat, _texts) in zip(names, results, strict=True):
        image = by_thread[chat.thread_id]
        assert image["identifier"] == name and name in image["prompt_typed"]
        # The live preview while it was drawn is an image too, replaced by the result.
        shown = [e["name"] for e in chat.elements if e.get("type") == "image"]
        results_shown = [n for n in shown if not n.endswith(" preview")]
        assert results_shown == [f"{image['id']}.png"], (name, shown)
        entry = entries[image["id"]]
        assert (entry["status"], entry["thread_id"]) == ("settled", chat.thread_id), entry
        assert entry["actual_usd"] is not None
    assert _log_problems(app) == []


# --------------------------------------------------------------------------- logins


@pytest.mark.timeout(300)
async def test_simultaneous_logins_all_succeed(make_app):
    app = make_app()
    names = _names("visitor", LOGINS)
    await _add_users(f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}", names)

    responses = await _logins(app.base_url, names)

    refused = {
        name: (r.status_code, r.text[:200])
        for name, r in zip(names, responses, strict=True)
        if r.status_code != 200
    }
    assert not refused, f"{len(refused)} of {LOGINS} logins refused: {refused}"

    # Each cookie is a login of its own user.
    async def who(response: httpx.Response) -> str:
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{app.base_url}/user", headers={"Cookie": _cookie(response)}, timeout=60
            )
            answer.raise_for_status()
            return answer.json()["identifier"]

    assert await asyncio.gather(*(who(r) for r in responses)) == names
    assert _log_problems(app) == []
