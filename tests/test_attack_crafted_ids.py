"""Crafted ids (not a UUID, too long, unicode, path-like, not a string) everywhere a
client names something: every route answers a clean 4xx, the socket refuses the
handshake with a reason, and nothing reaches the file system.

Issue 12, finding 10 ("some crafted ids give HTTP 500"): Chainlit's feedback routes
turned every error into 500, its element and action routes crashed on an unknown
session, a malformed element id escaped the data layer as a server error, and a
malformed thread id in the socket handshake was a server error too. Found while fixing
that: the handshake's `sessionId` became the folder `.files/<sessionId>`, which Chainlit
deletes with `shutil.rmtree` when a session is cleared, so `sessionId` = an absolute path
or `../..` let any logged-in user delete a folder of the server's choosing.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from tests.app_process import ADMIN_PASSWORD, AppProcess
from tests.chat_client import ChatSession, login_cookie

pytestmark = pytest.mark.slow

ODD_IDS = [
    "x",
    "a" * 5000,
    "ünïcödé-🦊",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "' OR '1'='1",
    "{" + str(uuid.uuid4()) + "}",
    str(uuid.uuid4()).upper(),
    str(uuid.uuid4()),
]
ODD_VALUES: list[Any] = [*ODD_IDS, 12345, None, {"$ne": 1}, ["x"], True]
APP_ROOT = Path(__file__).resolve().parents[1]


def _statuses(app: AppProcess, chat: ChatSession, odd: Any) -> dict[str, int]:
    """Status of each route that takes an id from the client, called with `odd`."""
    cookie = {"Cookie": chat.cookie}
    text = odd if isinstance(odd, str) else str(odd)
    # No keep-alive: a route that answers before reading the body closes the connection.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=app.base_url, headers=cookie, timeout=30, limits=fresh) as http:

        def call(method: str, path: str, **kwargs: Any) -> int:
            return http.request(method, path, **kwargs).status_code

        element = {"type": "custom", "id": odd, "name": "x", "display": "inline"}
        return {
            "media": call("GET", f"/media/{text}"),
            "thread": call("GET", f"/project/thread/{text}"),
            "element of own thread": call(
                "GET", f"/project/thread/{chat.thread_id}/element/{text}"
            ),
            "element": call("GET", f"/project/thread/{text}/element/{text}"),
            "rename": call("PUT", "/project/thread", json={"threadId": odd, "name": "x"}),
            "delete thread": call("DELETE", "/project/thread", json={"threadId": odd}),
            "threads cursor": call(
                "POST",
                "/project/threads",
                json={"pagination": {"first": 5, "cursor": odd}, "filter": {}},
            ),
            "rate": call(
                "PUT", "/feedback", json={"sessionId": odd, "feedback": {"forId": odd, "value": 1}}
            ),
            "rate with id": call(
                "PUT",
                "/feedback",
                json={
                    "sessionId": chat.session_id,
                    "feedback": {"forId": str(uuid.uuid4()), "id": odd, "value": 1},
                },
            ),
            "unrate": call("DELETE", "/feedback", json={"feedbackId": odd}),
            "upload": call(
                "POST",
                "/project/file",
                params={"session_id": text},
                files={"file": ("a.png", b"\x89PNG", "image/png")},
            ),
            "download": call("GET", f"/project/file/{text}", params={"session_id": text}),
            "download own": call(
                "GET", f"/project/file/{text}", params={"session_id": chat.session_id}
            ),
            "element update": call(
                "PUT", "/project/element", json={"sessionId": odd, "element": element}
            ),
            "element update own": call(
                "PUT", "/project/element", json={"sessionId": chat.session_id, "element": element}
            ),
            "element delete own": call(
                "DELETE",
                "/project/element",
                json={"sessionId": chat.session_id, "element": element},
            ),
            "action": call(
                "POST",
                "/project/action",
                json={"sessionId": odd, "action": {"name": "x", "payload": {}}},
            ),
            "action own": call(
                "POST",
                "/project/action",
                json={"sessionId": chat.session_id, "action": {"name": odd, "payload": odd}},
            ),
            "avatar": call("GET", f"/avatars/{text}"),
        }


async def test_crafted_ids_get_a_clean_4xx(make_app) -> None:
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    await chat.send("hello")  # so the conversation exists
    server_errors = {}
    for odd in ODD_VALUES:
        statuses = await asyncio.to_thread(_statuses, app, chat, odd)
        bad = {route: status for route, status in statuses.items() if status >= 500}
        if bad:
            server_errors[repr(odd)[:40]] = bad
    assert server_errors == {}
    # The same session still works: nothing above broke it.
    reply = await chat.send("still here")
    assert any("still here" in (m.get("output") or "") for m in reply)
    await chat.close()
    assert "Traceback" not in app.log()


def _relative_to_files(folder: Path) -> str:
    """`folder` as a session id relative to Chainlit's `.files` (`../../tmp/...`)."""
    return os.path.relpath(folder, APP_ROOT / ".files")


async def _refusal(app: AppProcess, cookie: str, auth: Any) -> str:
    """Connect to the socket with that handshake; the refusal's reason (fails if accepted)."""
    client = socketio.AsyncClient(reconnection=False)
    reasons: list[Any] = []

    @client.event
    async def connect_error(data: Any) -> None:
        reasons.append(data)

    try:
        await client.connect(
            app.base_url,
            socketio_path="/ws/socket.io",
            headers={"Cookie": cookie},
            auth=auth,
            transports=["websocket"],
        )
    except socketio.exceptions.ConnectionError:
        return str(reasons)
    # Accepted: do what the attack would do next, so its effect shows in the test.
    await client.emit("clear_session")
    await asyncio.sleep(0.3)
    await client.disconnect()
    await asyncio.sleep(0.5)
    pytest.fail(f"the handshake {auth!r} was accepted")


async def test_the_socket_handshake_refuses_crafted_ids(make_app, tmp_path: Path) -> None:
    app = make_app()
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "precious.txt").write_text("still here")
    relative = _relative_to_files(decoy)

    def auth(**changes: Any) -> dict[str, Any]:
        base = {
            "sessionId": str(uuid.uuid4()),
            "threadId": "",
            "clientType": "webapp",
            "userEnv": "{}",
        }
        return {**base, **changes}

    # Session ids that would name another folder: refused, the folder untouched.
    for session_id in (str(decoy), relative, "..", "x", str(uuid.uuid4()).upper()):
        reason = await _refusal(app, cookie, auth(sessionId=session_id))
        assert "invalid session id" in reason, (session_id, reason)
    assert (decoy / "precious.txt").read_text() == "still here"

    for thread_id in ODD_IDS[:6]:  # the rest are UUIDs, taken in canonical form
        reason = await _refusal(app, cookie, auth(threadId=thread_id))
        assert "invalid thread id" in reason, (thread_id, reason)
    for broken in (None, "not a dict", {"sessionId": str(uuid.uuid4())}):
        reason = await _refusal(app, cookie, broken)
        assert reason != "[]", broken

    # A well-formed handshake still connects, and resuming one's own thread still works.
    chat = ChatSession(app.base_url, cookie)
    await chat.connect()
    await chat.send("hello")
    await chat.close()
    again = ChatSession(app.base_url, cookie)
    await again.connect(resume_thread=chat.thread_id.upper())
    assert again.resumed is not None
    await again.close()
    assert "Traceback" not in app.log()
