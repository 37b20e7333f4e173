"""The first-run bugs of issue 15, each through the real `atelier` process.

A command chip sent with no text, an empty message, a busy port, a dropped request, the
`users` and `doctor` commands, how soon `run` names a bad setting, and a conversation
that is someone else's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.app_process import ADMIN_PASSWORD, ROOT, add_user, app_rows, atelier, clean_env
from tests.chat_client import ChatSession, connected_session, login_cookie, outputs
from tests.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.slow

UNAVAILABLE = "This conversation does not exist, or it belongs to another account."


def thread_names(app) -> list[str | None]:
    return [row["name"] for row in app_rows(app, "SELECT name FROM threads")]


async def _send_blank(chat: ChatSession, text: str, files: list[dict] | None) -> None:
    """Send a message with no words, as the browser would, and wait for the app's toast."""
    await chat.emit_message(text, files=files)
    await wait_until(lambda: any(event == "toast" for event, _ in chat.events), 20, "the toast")


# ------------------------------------------------------------------ a. command chips


async def test_a_command_chip_without_text_runs_the_command(make_app):
    """`/cost` picked from the `/` menu arrives as command="cost" with empty text."""
    app = make_app()
    chat = await connected_session(app.base_url)
    expected = {
        "cost": "Cost report",
        "help": "**Commands**",
        "styles": "**Styles**",
        "loras": "**Your LoRAs**",
    }
    for command, shown in expected.items():
        reply = outputs(await chat.send("", command=command))
        assert any(shown in text for text in reply), (command, reply)
        assert not any("Your message is empty" in text for text in reply), (command, reply)
    # The `/train` chip with "status" typed after it.
    reply = outputs(await chat.send("status", command="train"))
    assert any("**Your LoRAs**" in text for text in reply), reply
    # The conversation the chip opened is named by what it did, not left untitled.
    await wait_until(
        lambda: thread_names(app) == ["Spending report"], 20, "the conversation's title"
    )
    await chat.close()


async def test_an_empty_message_is_refused_and_leaves_no_conversation(make_app):
    app = make_app()
    chat = await connected_session(app.base_url)
    await _send_blank(chat, "   ", files=None)
    [toast] = [data for event, data in chat.events if event == "toast"]
    assert toast["message"].startswith("Your message is empty.")
    # A message after it is answered as usual, and only it opened the conversation.
    reply = outputs(await chat.send("/help"))
    assert any("**Commands**" in text for text in reply), reply
    await chat.close()
    app.stop()  # every message written
    steps = app_rows(app, "SELECT output FROM steps WHERE type = 'user_message'")
    assert [row["output"] for row in steps] == ["/help"]
    assert len(thread_names(app)) == 1


async def test_an_empty_first_message_creates_no_conversation(make_app):
    app = make_app()
    chat = await connected_session(app.base_url)
    await _send_blank(chat, "", files=[])
    await chat.close()
    app.stop()  # every message written
    assert app_rows(app, "SELECT id FROM threads") == []
    assert app_rows(app, "SELECT id FROM steps") == []


# ------------------------------------------------------------------- b. a busy port


def test_a_busy_port_fails_before_any_user_is_created(tmp_path):
    data = tmp_path / "data"
    env = clean_env()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        failed = subprocess.run(
            [sys.executable, "-m", "chat_app.cli", "run", "--port", str(port)]
            + ["--data-dir", str(data)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=120,
        )
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert f"Port {port} on 127.0.0.1 is already in use" in failed.stderr
    assert "Traceback" not in failed.stderr and "password" not in failed.stdout
    assert not data.exists()  # no database, no account, no secret

    # The port is free again: this start creates the account and shows its password.
    log = tmp_path / "second-start.log"
    with open(log, "wb") as out:
        started = subprocess.Popen(
            [sys.executable, "-m", "chat_app.cli", "run", "--port", str(port)]
            + ["--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
        )
        try:
            wait_until_sync(
                lambda: (
                    "Created user 'admin' with password:" in log.read_text()
                    or started.poll() is not None
                ),
                90,
                "the one-time password",
            )
            assert "Created user 'admin' with password:" in log.read_text(), log.read_text()
        finally:
            started.terminate()
            started.wait(30)


# -------------------------------------------------------- c. dropped requests, quietly


def test_a_request_the_browser_drops_is_not_logged_as_a_crash(make_app):
    app = make_app()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    # Files Chainlit serves as file responses: what a page change leaves half-loaded.
    paths = ["/favicon", "/logo?theme=light", "/avatars/Atelier", "/public/atelier.css"]
    for path in paths:
        for pause in (0, 0.005, 0.02):
            with socket.create_connection(("127.0.0.1", app.port)) as dropped:
                dropped.sendall(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n"
                    f"Cookie: {cookie}\r\n\r\n".encode()
                )
                time.sleep(pause)  # leaves before the answer, as a browser does
        kept = httpx.get(app.base_url + path, headers={"Cookie": cookie}, timeout=30)
        assert kept.status_code in (200, 404), (path, kept.status_code)
    app.stop()
    log = app.log()
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "No response returned" not in log


# ------------------------------------------------------------- d, e, f. the commands


def test_users_takes_data_dir_before_or_after_the_action(tmp_path):
    after = atelier(
        "users", "add", "carol", "--password-stdin", "--data-dir", str(tmp_path),
        stdin="long-enough-pw\n",
    )  # fmt: skip
    assert after.returncode == 0, after.stderr
    listed = atelier("users", "list", "--data-dir", str(tmp_path))
    assert listed.stdout.split() == ["carol", "user"], listed.stderr
    before = atelier("users", "--data-dir", str(tmp_path), "list")
    assert before.stdout == listed.stdout


def test_doctor_names_the_sqlite_file_by_its_path(tmp_path):
    result = atelier("doctor", "--data-dir", str(tmp_path))
    [line] = [line for line in result.stdout.splitlines() if " database " in f" {line} "]
    assert f"SQLite file {tmp_path / 'atelier.db'} reachable" in line, result.stdout
    assert "sqlite+aiosqlite:" not in line


_RUN_AND_SAY_WHAT_WAS_IMPORTED = """
import sys
from chat_app.cli import main
code = main(["run", "--data-dir", sys.argv[1]])
print("exit", code)
print("imported", sorted(m for m in ("chainlit", "fastapi", "uvicorn") if m in sys.modules))
"""


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ATELIER_REQUEST_TIMEOUT", "-3"), ("ATELIER_PRICES_FILE", "/nonexistent/prices.toml")],
)
def test_run_names_a_bad_setting_before_the_heavy_imports(tmp_path, variable, value):
    result = subprocess.run(
        [sys.executable, "-c", _RUN_AND_SAY_WHAT_WAS_IMPORTED, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        env={**clean_env(), variable: value},
        cwd=ROOT,
        timeout=120,
    )
    assert "exit 2" in result.stdout, result.stdout + result.stderr
    assert variable in result.stderr or value in result.stderr, result.stderr
    assert "imported []" in result.stdout  # Chainlit, FastAPI and uvicorn never loaded
    assert not (tmp_path / "data").exists()


# ----------------------------------------------- h. someone else's conversation, plainly


async def test_someone_elses_conversation_is_called_unavailable_in_plain_words(make_app):
    app = make_app()
    admin = await connected_session(app.base_url)
    await admin.send("/help")
    await admin.close()
    add_user(app, "bob", "bobs-password")
    bob = login_cookie(app.base_url, "bob", "bobs-password")

    # Over HTTP: the same 404 and words as for a conversation that does not exist (a
    # 401 would make the front end drop Bob's login).
    for thread_id in (admin.thread_id, str(uuid.uuid4())):
        answer = httpx.get(
            f"{app.base_url}/project/thread/{thread_id}", headers={"Cookie": bob}, timeout=30
        )
        assert (answer.status_code, answer.json()["detail"]) == (404, UNAVAILABLE)

    # Over the socket: not a dead page ("Could not reach the server") but a new chat,
    # told why, in which nothing reaches Admin's conversation.
    for thread_id in (admin.thread_id, str(uuid.uuid4())):
        visitor = ChatSession(app.base_url, bob, thread_id=thread_id)
        await visitor.connect()
        errors = [data for event, data in visitor.events if event == "resume_thread_error"]
        assert errors == [UNAVAILABLE]
        assert not any(event == "resume_thread" for event, _ in visitor.events)
        reply = outputs(await visitor.send("/help"))
        assert any("**Commands**" in text for text in reply)
        await visitor.close()
    app.stop()  # every message written
    asked_in_admins = app_rows(
        app,
        f"SELECT output FROM steps WHERE thread_id = '{admin.thread_id}' AND type = 'user_message'",
    )
    assert [row["output"] for row in asked_in_admins] == ["/help"]  # Admin's own only
    owners = app_rows(
        app, "SELECT users.identifier FROM threads JOIN users ON users.id = threads.user_id"
    )
    assert sorted(row["identifier"] for row in owners) == ["admin", "bob", "bob"]
