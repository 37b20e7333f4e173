"""Attack: keep using a login after it should have ended (issue 12, finding 2).

The app runs as a subprocess; users are changed with the real `atelier users` command
in another process against the same data directory, as an operator would. A stolen or
stale cookie must stop working on HTTP (cookie and bearer) and on the socket, an open
socket must be cut, and a removed account must never come back from its cookie.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import socketio
from chainlit.user import User as ChainlitUser
from sqlalchemy import func, select, update

from core.errors import NotFound
from memory.auth_sessions import AuthSessionStore
from memory.data_layer import AtelierDataLayer
from memory.db import session_factory
from memory.media_store import MediaStore
from memory.models import AuthSession, User, utcnow
from memory.users import UserStore
from tests.app_process import AppProcess
from tests.chat_client import ChatSession, login_cookie
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures (SQLite and PostgreSQL)

ROOT = Path(__file__).resolve().parent.parent
# A socket whose session ended is cut by the next sweep (every 2 s); this is only how
# long the test waits before calling it a failure.
CUT_PATIENCE_S = 20


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppProcess]:
    """One app in command mode (no chat model) shared by the tests; each uses own users."""
    process = AppProcess(tmp_path_factory.mktemp("sessions") / "data").start()
    yield process
    process.stop()
    if "Traceback" in process.log():
        print(process.log())


def atelier_users(app: AppProcess, *args: str, password: str | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ATELIER_"))}
    done = subprocess.run(
        [sys.executable, "-m", "chat_app.cli", "users", "--data-dir", str(app.data_dir), *args],
        input=None if password is None else password + "\n",
        capture_output=True,
        text=True,
        env=clean,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def add_user(app: AppProcess, name: str, password: str) -> None:
    atelier_users(app, "add", name, "--password-stdin", password=password)


def user_names(app: AppProcess) -> list[str]:
    return [line.split("\t")[0] for line in atelier_users(app, "list").splitlines()]


def token_of(cookie: str) -> str:
    return cookie.split("access_token=", 1)[1].split(";", 1)[0]


def get_user(app: AppProcess, cookie: str | None = None, bearer: str | None = None):
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx.get(f"{app.base_url}/user", headers=headers, timeout=30)


async def connected_chat(app: AppProcess, cookie: str) -> ChatSession:
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    assert "/image" in " ".join(m.get("output") or "" for m in await chat.send("/help"))
    return chat


async def until_cut(chat: ChatSession) -> None:
    for _ in range(int(CUT_PATIENCE_S / 0.1)):
        if not chat.sio.connected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the open socket of an ended session is still connected")


def ended_toast(chat: ChatSession) -> bool:
    return any(
        event == "toast" and "Log in again" in (data or {}).get("message", "")
        for event, data in chat.events
    )


async def assert_dead(app: AppProcess, cookie: str) -> None:
    """The cookie (and the same token as a bearer) is refused everywhere."""
    refused = get_user(app, cookie)
    assert refused.status_code == 401
    cleared = refused.headers.get_list("set-cookie")
    assert any(c.startswith("access_token=") and "Max-Age=0" in c for c in cleared), cleared
    assert get_user(app, bearer=token_of(cookie)).status_code == 401
    threads = httpx.post(
        f"{app.base_url}/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        headers={"Cookie": cookie},
    )
    assert threads.status_code == 401
    with pytest.raises(socketio.exceptions.ConnectionError):
        await ChatSession(app.base_url, cookie).connect()


async def test_removed_user_is_cut_off_and_never_recreated(app: AppProcess) -> None:
    add_user(app, "rm-bob", "bobs-password")
    add_user(app, "rm-carol", "carols-password")
    bob_cookie = login_cookie(app.base_url, "rm-bob", "bobs-password")
    carol_cookie = login_cookie(app.base_url, "rm-carol", "carols-password")
    bob = await connected_chat(app, bob_cookie)
    carol = await connected_chat(app, carol_cookie)

    atelier_users(app, "remove", "rm-bob")

    await until_cut(bob)
    assert ended_toast(bob)
    await assert_dead(app, bob_cookie)
    assert "rm-bob" not in user_names(app)  # the cookie did not bring the account back

    # The same name added again is a new account: the old cookie stays dead.
    add_user(app, "rm-bob", "a-new-password")
    await assert_dead(app, bob_cookie)
    fresh = login_cookie(app.base_url, "rm-bob", "a-new-password")
    assert get_user(app, fresh).json()["identifier"] == "rm-bob"

    # Another user's open socket and cookie were never disturbed.
    assert carol.sio.connected
    assert "/image" in " ".join(m.get("output") or "" for m in await carol.send("/help"))
    assert get_user(app, carol_cookie).status_code == 200
    await carol.close()


async def test_password_change_ends_every_session_of_that_user(app: AppProcess) -> None:
    add_user(app, "pw-dana", "danas-password")
    add_user(app, "pw-erin", "erins-password")
    laptop = login_cookie(app.base_url, "pw-dana", "danas-password")
    phone = login_cookie(app.base_url, "pw-dana", "danas-password")
    erin_cookie = login_cookie(app.base_url, "pw-erin", "erins-password")
    dana = await connected_chat(app, laptop)
    erin = await connected_chat(app, erin_cookie)

    out = atelier_users(app, "passwd", "pw-dana", "--password-stdin", password="new-password-1")
    assert "ended 2 login sessions" in out

    await until_cut(dana)
    await assert_dead(app, laptop)
    await assert_dead(app, phone)
    old = httpx.post(
        f"{app.base_url}/login", data={"username": "pw-dana", "password": "danas-password"}
    )
    assert old.status_code == 401
    assert get_user(app, login_cookie(app.base_url, "pw-dana", "new-password-1")).is_success
    assert "pw-dana" in user_names(app)

    assert erin.sio.connected
    assert "/image" in " ".join(m.get("output") or "" for m in await erin.send("/help"))
    await erin.close()


async def test_logout_ends_only_that_session(app: AppProcess) -> None:
    add_user(app, "lo-finn", "finns-password")
    first = login_cookie(app.base_url, "lo-finn", "finns-password")
    second = login_cookie(app.base_url, "lo-finn", "finns-password")
    on_first = await connected_chat(app, first)
    on_second = await connected_chat(app, second)

    logout = httpx.post(f"{app.base_url}/logout", headers={"Cookie": first})
    assert logout.status_code == 200

    await until_cut(on_first)
    await assert_dead(app, first)
    # A copy of the logged-out cookie kept by an attacker is as dead as the browser's.
    assert get_user(app, first).status_code == 401

    assert on_second.sio.connected
    assert "/image" in " ".join(m.get("output") or "" for m in await on_second.send("/help"))
    assert get_user(app, second).status_code == 200
    await on_second.close()

    # Logging in again from the browser that still sends the dead cookie: the new
    # cookie is set, and not deleted again in the same answer.
    again = httpx.post(
        f"{app.base_url}/login",
        data={"username": "lo-finn", "password": "finns-password"},
        headers={"Cookie": first},
    )
    assert again.status_code == 200
    set_cookies = [c for c in again.headers.get_list("set-cookie") if c.startswith("access_")]
    assert len(set_cookies) == 1 and "Max-Age=0" not in set_cookies[0]
    assert get_user(app, f"access_token={again.cookies['access_token']}").status_code == 200


async def test_forged_and_stale_tokens_do_not_pass(app: AppProcess) -> None:
    """A token signed with the app's secret but naming no session (as issued before
    sessions existed) is refused; a garbled one is refused by Chainlit as before."""
    import jwt

    secret = (app.data_dir / "auth_secret").read_text().strip()
    legacy = jwt.encode(
        {"identifier": "admin", "metadata": {"role": "admin"}, "exp": 4_000_000_000},
        secret,
        algorithm="HS256",
    )
    assert get_user(app, f"access_token={legacy}").status_code == 401
    with pytest.raises(socketio.exceptions.ConnectionError):
        await ChatSession(app.base_url, f"access_token={legacy}").connect()
    assert get_user(app, "access_token=not-a-token").status_code == 401


# ------------------------------------------------ the session rows, on SQLite and Postgres


async def test_session_rows_follow_the_account(engine, tmp_path: Path) -> None:  # noqa: F811
    sessions = session_factory(engine)
    users = UserStore(sessions)
    store = AuthSessionStore(sessions, max_age=timedelta(days=15))

    bob = await users.add("bob", "bobs-password")
    first, second = await store.create(bob.id), await store.create(bob.id)
    assert (await store.active(first)).identifier == "bob"

    assert await store.revoke(first) and not await store.revoke(first)  # logout, once
    assert await store.active(first) is None and await store.active(second) is not None

    assert await users.set_password("bob", "new-password-1") == 1
    assert await store.active(second) is None

    third = await store.create(bob.id)
    await users.remove("bob")
    assert await store.active(third) is None
    async with sessions() as session:
        left = await session.scalar(select(func.count()).select_from(AuthSession))
    assert left == 0  # all of the removed user's rows went with them
    with pytest.raises(NotFound):
        await store.create(bob.id)  # a removed user cannot get a session

    # The same name again is another account; nothing of the old one carries over.
    again = await users.add("bob", "bobs-password")
    assert again.id != bob.id and await store.active(third) is None

    # The data layer never makes an account from a name (a cookie's, say).
    layer = AtelierDataLayer(engine, MediaStore(tmp_path / "media"), "x" * 40)
    assert await layer.create_user(ChainlitUser(identifier="mallory")) is None
    assert (await layer.create_user(ChainlitUser(identifier="bob"))).id == again.id
    async with sessions() as session:
        assert await session.scalar(select(User).where(User.identifier == "mallory")) is None


async def test_sessions_expire_and_are_purged(engine) -> None:  # noqa: F811
    sessions = session_factory(engine)
    account = await UserStore(sessions).add("old-timer", "long-enough-pw")
    store = AuthSessionStore(sessions, max_age=timedelta(days=1))
    old, new = await store.create(account.id), await store.create(account.id)
    async with sessions() as session:
        await session.execute(
            update(AuthSession)
            .where(AuthSession.id == old)
            .values(created_at=utcnow() - timedelta(days=2))
        )
        await session.commit()
    assert set(await store.active_many([old, new, "not-a-uuid"])) == {new}
    assert await store.purge() == 1
    assert await store.active(new) is not None
