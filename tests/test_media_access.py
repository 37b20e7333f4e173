"""One user can never see another's threads, steps, elements or files over HTTP/WS."""

from __future__ import annotations

import re

import httpx
import pytest
import socketio

from tests.app_process import ADMIN_PASSWORD, add_user
from tests.chat_client import ChatSession, login_cookie

pytestmark = pytest.mark.slow
UNAVAILABLE = "This conversation does not exist, or it belongs to another account."


async def test_other_users_cannot_read_threads_or_media(make_app):
    app = make_app()
    admin = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await admin.connect()
    await admin.send("/image a private painting")
    await admin.close()
    thread = httpx.get(
        f"{app.base_url}/project/thread/{admin.thread_id}", headers={"Cookie": admin.cookie}
    ).json()
    url = next(e["url"] for e in thread["elements"] if e["type"] == "image")
    key = re.match(r"/media/([0-9a-f]{64})\?", url).group(1)

    add_user(app, "bob", "bobs-password")
    bob = login_cookie(app.base_url, "bob", "bobs-password")
    get = lambda path, cookie=None: httpx.get(  # noqa: E731
        app.base_url + path, headers={"Cookie": cookie} if cookie else {}
    )

    assert get(url).status_code == 200  # the signed link the owner was given works
    # Byte ranges, which video players need to seek (and Safari to play at all).
    ranged = httpx.get(app.base_url + url, headers={"Range": "bytes=0-7"})
    assert ranged.status_code == 206 and ranged.content == b"\x89PNG\r\n\x1a\n"
    assert get(f"/media/{key}", admin.cookie).status_code == 200  # owner by cookie
    assert get(f"/media/{key}", bob).status_code == 404
    assert get(f"/media/{key}").status_code == 401
    tampered = re.sub(r"sig=\w+", "sig=" + "0" * 32, url)
    assert get(tampered, bob).status_code == 404
    expired = re.sub(r"exp=\d+", "exp=1000", url)
    assert get(expired).status_code == 401
    traversal = get("/media/..%2F..%2Fetc%2Fpasswd", bob)
    assert "root:" not in traversal.text and not traversal.headers["content-type"].startswith(
        "image/"
    )

    assert get(f"/project/thread/{admin.thread_id}", bob).status_code in (401, 404)
    listing = httpx.post(
        f"{app.base_url}/project/threads",
        json={"pagination": {"first": 20}, "filter": {}},
        headers={"Cookie": bob},
    ).json()
    assert listing["data"] == []

    # Asking for Admin's thread gets Bob a new chat of his own, told that it is not his.
    intruder = ChatSession(app.base_url, bob, thread_id=admin.thread_id)
    await intruder.connect()
    assert ("resume_thread_error", UNAVAILABLE) in intruder.events
    assert not any(event == "resume_thread" for event, _ in intruder.events)
    await intruder.close()
    crafted = ChatSession(app.base_url, bob)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await crafted.connect(resume_thread="x' OR '1'='1")
