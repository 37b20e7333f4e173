"""Several `atelier run` replicas on one PostgreSQL, one Redis and one data directory.

Two real app processes sit behind a sticky-session proxy (tests/sticky_proxy.py), as
they would behind nginx. A user logs in and chats through the proxy; the replica that
holds the session is killed with SIGKILL while it waits on an image; the user carries
on through the proxy, which fails over to the other replica: the login cookie still
works there (same CHAINLIT_AUTH_SECRET, server-side session rows in the shared
database), the conversation resumes with its messages and its image, the interrupted
request is given back and told, and the chat model sees the history.

A fresh deployment (two replicas and a CPU worker started together on nothing) checks
what replicas must agree on or share: the migrations, the first user, the generated
secret, failed-login counts in Redis, and the workers. The proxy itself is checked
against two trivial servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from sqlalchemy import text

from memory.db import create_engine, session_factory
from memory.users import UserStore
from tests.app_process import ADMIN_PASSWORD, AppProcess, free_port
from tests.chat_client import ChatSession, outputs
from tests.db_fixtures import db_url  # noqa: F401 - fixture
from tests.sticky_proxy import COOKIE, StickyProxy
from tests.test_crash_recovery import HoldingOpenAI
from tests.waiting import wait_until, wait_until_sync
from tests.worker_fixtures import worker_pool  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")
PASSWORD = "replica-test-password"
REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("ATELIER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Replicas share one server database: the PostgreSQL variant of tests/db_fixtures.py.
on_postgres = pytest.mark.parametrize("db_url", ["postgres"], indirect=True)


def _app_env(fake: HoldingOpenAI, database_url: str, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_BASE_URL": fake.base_url,
        "ATELIER_LLM_MODEL": "gpt-test",
        "ATELIER_DATABASE_URL": database_url,
        **extra,
    }


def _start_all(apps: list[AppProcess]) -> None:
    """Start every replica at the same time, as a compose file or an orchestrator does."""
    for app in apps:
        app.proc = None
    errors: list[BaseException] = []

    def start(app: AppProcess) -> None:
        try:
            app.start(timeout=120)
        except BaseException as exc:  # reported below with every replica's log
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, "\n\n".join(str(e) for e in errors)


@pytest.fixture
def fake_openai() -> Iterator[HoldingOpenAI]:
    """The fake OpenAI, able to hold image requests as a provider still working does."""
    with HoldingOpenAI() as fake:
        yield fake
        fake.release()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def replicas(tmp_path: Path, db_url: str, fake_openai: HoldingOpenAI) -> Iterator[Any]:  # noqa: F811
    """`start(count, **env)`: that many replicas sharing the database, Redis and a data
    directory, started together; all stopped afterwards."""
    started: list[AppProcess] = []
    data = tmp_path / "data"

    def start(count: int = 2, **env: str) -> list[AppProcess]:
        apps = [AppProcess(data, _app_env(fake_openai, db_url, **env)) for _ in range(count)]
        started.extend(apps)
        _start_all(apps)
        return apps

    yield start
    for app in started:
        app.stop()


@pytest.fixture
async def proxy_for() -> AsyncIterator[Any]:
    proxies: list[StickyProxy] = []

    async def make(apps: list[AppProcess]) -> StickyProxy:
        proxy = await StickyProxy([("127.0.0.1", app.port) for app in apps]).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


async def _login(base_url: str, cookie: str = "") -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{base_url}/login",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            headers={"Cookie": cookie} if cookie else {},
            timeout=60,
        )


def _cookie_header(response: httpx.Response) -> str:
    response.raise_for_status()
    return "; ".join(f"{k}={v}" for k, v in response.cookies.items())


def _kill(app: AppProcess) -> None:
    """SIGKILL: no shutdown of any kind, as when a machine or container dies."""
    assert app.proc is not None
    app.proc.send_signal(signal.SIGKILL)
    app.proc.wait(10)
    app.proc = None


async def _steps(database_url: str, thread_id: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT type, output FROM steps WHERE thread_id = :t "
                    "ORDER BY created_at, position"
                ),
                {"t": thread_id},
            )
            return [dict(row) for row in rows.mappings()]
    finally:
        await engine.dispose()


async def _add_user(database_url: str, name: str) -> None:
    """An account, as `atelier users add` makes one, once the replicas have migrated."""
    engine = create_engine(database_url)
    try:
        await UserStore(session_factory(engine)).add(name, PASSWORD)
    finally:
        await engine.dispose()


async def _stored_outputs(database_url: str, thread_id: str) -> list[str]:
    return [s["output"] or "" for s in await _steps(database_url, thread_id)]


async def _ledger_statuses(database_url: str) -> list[str]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return list((await conn.scalars(text("SELECT status FROM ledger_entries"))).all())
    finally:
        await engine.dispose()


async def _wait_for(
    read: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str, timeout: float = 40
) -> T:
    """Read (from the database) until `done` holds; fail naming `what` and the last read."""
    deadline = time.monotonic() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}; last saw {value}"
        await asyncio.sleep(0.2)


@on_postgres
@pytest.mark.slow
@pytest.mark.postgres
async def test_a_killed_replica_s_user_carries_on_on_the_other(
    replicas,
    proxy_for,
    fake_openai,
    db_url,  # noqa: F811
):
    apps = replicas(2, CHAINLIT_AUTH_SECRET=secrets.token_urlsafe(48))
    proxy = await proxy_for(apps)

    login = await _login(proxy.base_url)
    cookie = _cookie_header(login)
    holder_name = login.cookies[COOKIE]
    holder = apps[int(holder_name[1:])]
    survivor = next(app for app in apps if app is not holder)

    chat = ChatSession(proxy.base_url, cookie)
    chat.ask_answer = "confirm_spend"
    await chat.connect()
    drawn = outputs(await chat.send("/image a red fox in the snow"))
    assert any("Generated 1 image(s)" in t for t in drawn), drawn
    assert "You said: hello one" in outputs(await chat.send("hello one"))
    sockets = [r for r in proxy.routed if r.upgrade]
    assert [r.backend for r in sockets] == [holder_name], proxy.routed

    # The replica dies while the provider still works on an image for this user. What
    # the user saw before is stored by then (Chainlit writes steps in the background;
    # a kill -9 loses what was not yet written, on one replica or many).
    fake_openai.hold = lambda request: True
    sending = asyncio.create_task(chat.send("/image a blue whale", timeout=120))
    await _wait_for(
        lambda: _stored_outputs(db_url, chat.thread_id),
        lambda stored: (
            fake_openai.held >= 1 and {"You said: hello one", "/image a blue whale"} <= set(stored)
        ),
        "the held image request and the stored conversation",
    )
    _kill(holder)
    sending.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await sending
    fake_openai.hold = None
    fake_openai.release()

    # The same cookie is honoured by the other replica: the proxy re-pins the client.
    async with httpx.AsyncClient() as client:
        who = await client.get(f"{proxy.base_url}/user", headers={"Cookie": cookie})
    assert who.status_code == 200 and who.json()["identifier"] == "admin", who.text
    survivor_name = who.cookies[COOKIE]
    assert survivor_name != holder_name

    # The live replica finds the dead one at its next heartbeat and gives back what it
    # had reserved for the interrupted image.
    await _wait_for(
        lambda: _ledger_statuses(db_url),
        lambda statuses: sorted(statuses) == ["released", "settled"],
        "the dead replica's reservation to be released by the live one",
    )

    resumed = ChatSession(proxy.base_url, cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    assert proxy.routed[-1].upgrade and proxy.routed[-1].backend == survivor_name
    steps = resumed.resumed["steps"]
    typed = [s["output"] for s in steps if s["type"] == "user_message"]
    assert typed == ["/image a red fox in the snow", "hello one", "/image a blue whale"], typed
    assert any("You said: hello one" in (s["output"] or "") for s in steps)
    images = [e for e in resumed.resumed["elements"] if e["type"] == "image"]
    assert images, resumed.resumed["elements"]
    async with httpx.AsyncClient() as client:
        served = await client.get(proxy.base_url + images[0]["url"], headers={"Cookie": cookie})
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    await wait_until(
        lambda: any("interrupted" in (m.get("output") or "") for m in resumed.messages.values()),
        20,
        "the notice that the image was interrupted",
    )
    notice = next(
        m["output"] for m in resumed.messages.values() if "interrupted" in (m.get("output") or "")
    )
    assert "“/image a blue whale”" in notice and "Nothing was counted" in notice, notice

    fake_openai.clear_requests()
    assert "You said: hello two" in outputs(await resumed.send("hello two"))
    [request] = fake_openai.requests_to("/chat/completions")
    history = [m["content"] for m in request.json["messages"][1:]]
    assert "hello one" in history and history[-1] == "hello two", history
    await resumed.close()

    # Logging in again is clean too, and pins the client to the live replica.
    again = await _login(proxy.base_url, cookie)
    assert again.status_code == 200 and again.cookies.get(COOKIE) == survivor_name
    assert "Traceback" not in survivor.log(), survivor.log()[-4000:]


@on_postgres
@pytest.mark.slow
@pytest.mark.postgres
async def test_a_fresh_deployment_works_as_one(
    replicas,
    worker_pool,  # noqa: F811
    tiny_sd_dir,
    redis_client,
    db_url,  # noqa: F811
):
    """Two replicas and a GPU worker started together on nothing: no CHAINLIT_AUTH_SECRET,
    an empty database, data directory and board. Both replicas migrate, agree on one
    admin and one secret, honour each other's cookies, count failed logins together in
    Redis, and share the worker: each replica's user gets their own image back,
    whichever replica handed the job out."""
    worker_pool.start("w1")
    apps = replicas(
        2,
        ATELIER_REDIS_URL=REDIS_URL,
        ATELIER_LOGIN_MAX_FAILURES="2",
        ATELIER_LOCAL_MODEL=str(tiny_sd_dir),
        **worker_pool.env,
    )
    for app in apps:
        assert "Traceback" not in app.log(), app.log()[-4000:]
    # Names and an address of this test's own, so the login counts it leaves in Redis
    # are its own (uvicorn trusts X-Forwarded-For from 127.0.0.1).
    token = uuid.uuid4().hex[:8]
    painter, guesser = f"painter-{token}", f"guesser-{token}"
    address = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250)}"
    await _add_user(db_url, painter)
    try:
        async with httpx.AsyncClient(headers={"X-Forwarded-For": address}) as client:

            async def login(app: AppProcess, name: str, password: str) -> httpx.Response:
                return await client.post(
                    f"{app.base_url}/login",
                    data={"username": name, "password": password},
                    timeout=60,
                )

            cookies = [_cookie_header(await login(app, painter, PASSWORD)) for app in apps]
            for cookie, other in zip(cookies, reversed(apps), strict=True):
                who = await client.get(f"{other.base_url}/user", headers={"Cookie": cookie})
                assert who.status_code == 200 and who.json()["identifier"] == painter, who.text

            assert (await login(apps[0], guesser, "wrong-password-1")).status_code == 401
            assert (await login(apps[1], guesser, "wrong-password-2")).status_code == 401
            locked = await login(apps[0], guesser, "wrong-password-3")
            assert locked.status_code == 429, locked.text
            assert "Too many failed logins for this account" in locked.text

        await asyncio.to_thread(worker_pool.wait_ready)

        async def draw(app: AppProcess, cookie: str, seed: int) -> ChatSession:
            chat = ChatSession(app.base_url, cookie)
            await chat.connect()
            await chat.send("/backend local")
            texts = outputs(
                await chat.send(f"/image a small red house --seed {seed} --size 64x64 --steps 2")
            )
            assert any("Generated 1 image(s)" in t for t in texts), texts
            return chat

        chats = await asyncio.gather(
            *(draw(app, c, 7 + i) for i, (app, c) in enumerate(zip(apps, cookies, strict=True)))
        )
        stats = redis_client.hgetall(f"{worker_pool.prefix}stats")
        assert int(stats.get(b"succeeded", 0)) == 2, stats
        for chat, other in zip(chats, reversed(apps), strict=True):
            [image] = [
                e for e in chat.elements if e.get("type") == "image" and "preview" not in e["name"]
            ]
            async with httpx.AsyncClient() as client:
                served = await client.get(
                    other.base_url + image["url"], headers={"Cookie": chat.cookie}
                )
            assert served.status_code == 200 and served.headers["content-type"] == "image/png"
            await chat.close()
    finally:
        for pattern in (f"*{token}*", f"*{address}*"):
            keys = list(redis_client.scan_iter(match=pattern))
            if keys:
                redis_client.delete(*keys)


@on_postgres
@pytest.mark.slow
@pytest.mark.postgres
async def test_a_job_whose_user_left_completes_and_shows_on_resume(
    replicas,
    worker_pool,  # noqa: F811
    tiny_sd_dir,
    redis_client,
    db_url,  # noqa: F811
):
    """The user closes the tab while a worker runs their image: the job is not cancelled
    (only Stop cancels), its result is stored once, and it is there when they come
    back."""
    worker_pool.start("w1")
    [app] = replicas(1, ATELIER_LOCAL_MODEL=str(tiny_sd_dir), **worker_pool.env)
    await asyncio.to_thread(worker_pool.wait_ready)
    login = await _login(app.base_url)
    cookie = _cookie_header(login)
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    await chat.send("/backend local")
    asking = asyncio.create_task(
        chat.send("/image a small red house --seed 5 --size 64x64 --steps 60", timeout=120)
    )
    await wait_until(
        lambda: redis_client.exists(f"{worker_pool.prefix}busy:w1"), 60, "the worker to start"
    )
    await chat.close()  # the tab is closed mid-job
    asking.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await asking

    await _wait_for(
        lambda: _image_count(db_url, chat.thread_id),
        lambda count: count == 1,
        "the image made for nobody watching to be stored",
        timeout=90,
    )
    stats = redis_client.hgetall(f"{worker_pool.prefix}stats")
    assert int(stats.get(b"succeeded", 0)) == 1 and not stats.get(b"cancelled"), stats

    back = ChatSession(app.base_url, cookie)
    await back.connect(resume_thread=chat.thread_id)
    images = [e for e in back.resumed["elements"] if e["type"] == "image"]
    assert len(images) == 1, back.resumed["elements"]
    await back.close()
    assert "Traceback" not in app.log(), app.log()[-4000:]


async def _image_count(database_url: str, thread_id: str) -> int:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            query = text("SELECT count(*) FROM images WHERE thread_id = :t")
            return int((await conn.scalar(query, {"t": thread_id})) or 0)
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- the proxy


async def _named_server(name: str) -> asyncio.Server:
    """An HTTP server that answers every request with its name, then closes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = name.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def test_the_proxy_pins_a_client_and_fails_over():
    servers = [await _named_server(name) for name in ("first", "second")]
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    async with (
        StickyProxy([("127.0.0.1", port) for port in ports]) as proxy,
        httpx.AsyncClient(base_url=proxy.base_url) as client,
    ):
        first = await client.get("/")
        pin = first.cookies[COOKIE]
        answered = first.text
        for _ in range(4):  # the cookie is in the client's jar now: same replica
            again = await client.get("/")
            assert again.text == answered and COOKIE not in again.cookies

        dead = servers[int(pin[1:])]
        dead.close()
        await dead.wait_closed()
        moved = await client.get("/")
        assert moved.status_code == 200 and moved.text != answered
        assert moved.cookies[COOKIE] != pin  # re-pinned to the live one
        assert (await client.get("/")).text == moved.text

        live = servers[1 - int(pin[1:])]
        live.close()
        await live.wait_closed()
        none = await client.get("/")
        assert none.status_code == 502 and "No replica is available" in none.text


# ------------------------------------------------------------- nginx, as deploy/ runs it

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _nginx_config(folder: Path, port: int, apps: list[AppProcess]) -> Path:
    """deploy/nginx.conf as shipped, with this test's replicas, port and writable paths.

    Only addresses and file places change; the stickiness, fail-over and socket rules
    are the file's own. `X-Upstream` tells the test which replica answered."""
    text_ = (REPO / "deploy" / "nginx.conf").read_text()
    servers = "".join(
        f"        server 127.0.0.1:{app.port} max_fails=1 fail_timeout=10s;\n" for app in apps
    )
    text_ = re.sub(r"(        server app\d:8000 [^\n]*\n)+", servers, text_)
    text_ = text_.replace("listen 80;", f"listen 127.0.0.1:{port};")
    text_ = text_.replace(
        "add_header Set-Cookie $atelier_sticky_cookie always;",
        "add_header Set-Cookie $atelier_sticky_cookie always;\n"
        "            add_header X-Upstream $upstream_addr always;",
    )
    places = "".join(
        f"    {name}_temp_path {folder / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text_ = text_.replace(
        "http {\n", f"http {{\n{places}    access_log {folder / 'access.log'};\n", 1
    )
    text_ = f"pid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n" + text_
    assert "app1:8000" not in text_ and f"127.0.0.1:{port}" in text_
    path = folder / "nginx.conf"
    path.write_text(text_)
    return path


@contextlib.contextmanager
def _nginx(folder: Path, apps: list[AppProcess]) -> Iterator[str]:
    assert NGINX is not None
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = _nginx_config(folder, port, apps)
    checked = subprocess.run([NGINX, "-t", "-c", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen(
        [NGINX, "-c", str(config), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_sync(lambda: _answers(base_url), 20, "nginx to listen")
        yield base_url
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(base_url: str) -> bool:
    try:
        httpx.get(base_url + "/", timeout=2)
    except httpx.HTTPError:
        return False
    return True


@on_postgres
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)")
async def test_behind_nginx_with_the_deploy_config(replicas, tmp_path, db_url):  # noqa: F811
    """The shipped deploy/nginx.conf in front of two replicas: the browser stays on one
    replica (polling and websocket alike), and when that one is killed the same cookie
    carries on on the other and the conversation resumes."""
    apps = replicas(2, CHAINLIT_AUTH_SECRET=secrets.token_urlsafe(48))
    with _nginx(tmp_path / "nginx", apps) as base_url:
        login = await _login(base_url)
        cookie = _cookie_header(login)
        assert COOKIE in login.cookies  # nginx's own stickiness cookie
        chat = ChatSession(base_url, cookie)
        await chat.connect()
        assert "You said: hello one" in outputs(await chat.send("hello one"))
        async with httpx.AsyncClient() as client:
            answers = [
                await client.get(f"{base_url}/user", headers={"Cookie": cookie}) for _ in range(4)
            ]
        upstreams = {a.headers["x-upstream"] for a in answers}
        assert len(upstreams) == 1, upstreams  # pinned
        (holder_addr,) = upstreams
        holder = next(app for app in apps if holder_addr.endswith(f":{app.port}"))
        await _wait_for(
            lambda: _stored_outputs(db_url, chat.thread_id),
            lambda stored: "You said: hello one" in stored,
            "the first exchange to be stored",
        )
        _kill(holder)
        await chat.close()

        async with httpx.AsyncClient() as client:
            who = await client.get(f"{base_url}/user", headers={"Cookie": cookie})
        assert who.status_code == 200 and who.json()["identifier"] == "admin", who.text
        assert not who.headers["x-upstream"].endswith(f":{holder.port}")

        resumed = ChatSession(base_url, cookie)
        await resumed.connect(resume_thread=chat.thread_id)
        typed = [s["output"] for s in resumed.resumed["steps"] if s["type"] == "user_message"]
        assert typed == ["hello one"], typed
        assert "You said: hello two" in outputs(await resumed.send("hello two"))
        await resumed.close()
