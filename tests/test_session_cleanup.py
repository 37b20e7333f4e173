"""Sessions leave no messages or connections behind (chat_app/session_cleanup.py).

Chainlit keeps every message of a session in `chainlit.chat_context.chat_contexts` and
never removes it; the app drops a session's list when each turn ends and when the
session ends. A session kept for a reconnect (a closed tab) lets go of its connection.

The app runs as a user runs it, in its own process; a probe loaded into that process
(a `sitecustomize` on its PYTHONPATH) writes, on SIGUSR1, which sessions Chainlit has
and what it keeps for each, so the test reads the app's real state without changing
the app.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

from chainlit.chat_context import chat_contexts
from chainlit.config import config
from chainlit.session import WebsocketSession

from chat_app import session_cleanup
from tests.app_process import ADMIN_PASSWORD, AppProcess
from tests.chat_client import ChatSession, login_cookie

PROBE = """
import json, os, signal

def _probe(*_):
    from chainlit.chat_context import chat_contexts
    from chainlit.session import ws_sessions_id

    state = {
        "message_lists": {sid: len(messages) for sid, messages in chat_contexts.items()},
        "sessions": sorted(ws_sessions_id),
        # sessions whose request still holds its connection (receive/send, the scope)
        "holding_connections": sorted(
            sid
            for sid, session in ws_sessions_id.items()
            if any(not isinstance(value, str) for value in session.environ.values())
        ),
    }
    path = os.environ["MEMORY_PROBE_FILE"]
    with open(path + ".tmp", "w") as out:
        json.dump(state, out)
    os.replace(path + ".tmp", path)

if os.environ.get("MEMORY_PROBE_FILE"):
    signal.signal(signal.SIGUSR1, _probe)
"""


def probe(app: AppProcess, out: Path, timeout: float = 20) -> dict[str, Any]:
    """The app's sessions and message lists, as its process sees them now."""
    assert app.proc is not None
    out.unlink(missing_ok=True)
    os.kill(app.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not out.exists():
        assert time.monotonic() < deadline, "the probe in the app process never answered"
        time.sleep(0.02)
    return json.loads(out.read_text())


async def probe_until(app: AppProcess, out: Path, wanted, what: str) -> dict[str, Any]:
    """Probe until `wanted(state)` holds (a turn's task ends just after its reply)."""
    deadline = time.monotonic() + 20
    while True:
        state = probe(app, out)
        if wanted(state) or time.monotonic() > deadline:
            assert wanted(state), f"{what}; the app has {state}"
            return state
        await asyncio.sleep(0.1)


async def new_chat(chat: ChatSession) -> None:
    """End a conversation as the browser's "New chat" does: `clear_session`, then close.

    The browser writes both to the socket in order; python-socketio's disconnect closes
    the socket without sending what is still queued, so the queue is drained first.
    """
    await chat.sio.emit("clear_session")
    await chat.sio.eio.queue.join()
    await chat.close()


async def test_turns_and_ended_sessions_leave_no_message_lists(make_app, tmp_path):
    hook = tmp_path / "probe"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "probe.json"
    app = make_app(PYTHONPATH=str(hook), MEMORY_PROBE_FILE=str(out))
    cookie = login_cookie(app.base_url, "admin", ADMIN_PASSWORD)

    first = ChatSession(app.base_url, cookie)
    await first.connect()
    # The probe sees Chainlit's lists: the welcome message is in this session's.
    assert probe(app, out)["message_lists"].get(first.session_id, 0) >= 1

    await first.send("/help")
    await first.send("hello there")
    second = ChatSession(app.base_url, cookie)
    await second.connect()
    await second.send("hello again")
    state = await probe_until(
        app, out, lambda s: not s["message_lists"], "no list is kept once the turns end"
    )
    assert {first.session_id, second.session_id} <= set(state["sessions"])
    assert second.session_id in state["holding_connections"]  # it is connected

    # One ends as the browser's "New chat" ends it, the other as a closed tab does.
    await new_chat(first)
    await second.close()
    state = await probe_until(
        app,
        out,
        lambda s: first.session_id not in s["sessions"],
        "the session ended by New chat is cleared",
    )
    assert state["message_lists"] == {}
    # The closed tab's session is kept for a reconnect (Chainlit's session_timeout),
    # without its messages or its closed connection.
    assert second.session_id in state["sessions"]
    assert state["holding_connections"] == []


async def _noop(*_: Any) -> None:
    return None


async def test_with_message_editing_on_a_live_session_keeps_its_list(monkeypatch):
    """Editing reads the list, so it stays while the session lives; a gone session's goes."""
    monkeypatch.setattr(config.features, "edit_message", True)
    live = WebsocketSession(
        id=str(uuid.uuid4()),
        socket_id=str(uuid.uuid4()),
        emit=_noop,
        emit_call=_noop,
        user_env={},
        client_type="webapp",
    )
    gone = str(uuid.uuid4())  # a session Chainlit has already cleared
    chat_contexts[live.id] = ["a message"]
    chat_contexts[gone] = ["a message"]
    try:
        session_cleanup.forget(live.id)
        assert chat_contexts[live.id] == ["a message"]
        assert session_cleanup.forget_gone() >= 1
        assert gone not in chat_contexts and live.id in chat_contexts
    finally:
        chat_contexts.pop(live.id, None)
        chat_contexts.pop(gone, None)
        await live.delete()
