"""A test client that speaks Chainlit's real protocol: POST /login, then Socket.IO.

It behaves like the browser: it logs in for a cookie, connects to /ws/socket.io with the
session auth the front end sends, emits `client_message` and waits for `task_end`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import socketio

from tests.app_process import ADMIN_PASSWORD
from tests.waiting import wait_until


def login_cookie(base_url: str, username: str, password: str) -> str:
    response = httpx.post(
        f"{base_url}/login", data={"username": username, "password": password}, timeout=30
    )
    response.raise_for_status()
    cookies = "; ".join(f"{k}={v}" for k, v in response.cookies.items())
    assert cookies, "login set no cookie"
    return cookies


@dataclass
class ChatSession:
    base_url: str
    cookie: str
    thread_id: str | None = None
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    elements: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, Any]] = field(default_factory=list)
    resumed: dict[str, Any] | None = None
    # How to answer an AskActionMessage (Confirm / Cancel): the action's name, or None
    # to leave it unanswered (the app then times out).
    ask_answer: str | None = None
    asks: list[dict[str, Any]] = field(default_factory=list)

    async def connect(self, resume_thread: str | None = None) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self._task_end = asyncio.Event()
        self._resumed = asyncio.Event()
        self._asks_answered = 0

        @self.sio.on("ask")
        async def ask(data: Any = None) -> Any:
            """Answer as the browser does: the ack carries the chosen action."""
            self.asks.append(data)
            if self.ask_answer is None:
                return None
            # An answered ask ends the task for a moment (Chainlit's emitter), then goes on.
            self._asks_answered += 1
            return {"name": self.ask_answer, "payload": {}, "label": self.ask_answer}

        @self.sio.on("*")
        async def any_event(event: str, data: Any = None) -> None:
            self.events.append((event, data))
            if event in ("new_message", "update_message") and isinstance(data, dict):
                if data["id"] not in self.messages:
                    self.order.append(data["id"])
                self.messages[data["id"]] = {**self.messages.get(data["id"], {}), **data}
            elif event == "stream_token" and isinstance(data, dict):
                entry = self.messages.setdefault(data["id"], {"id": data["id"], "output": ""})
                if data["id"] not in self.order:
                    self.order.append(data["id"])
                entry["output"] = (entry.get("output") or "") + data.get("token", "")
            elif event == "element":
                self.elements.append(data)
            elif event == "task_end":
                if self._asks_answered:
                    self._asks_answered -= 1
                else:
                    self._task_end.set()
            elif event == "resume_thread":
                self.resumed = data
                self._resumed.set()
            elif event == "first_interaction" and isinstance(data, dict):
                self.thread_id = data.get("thread_id") or self.thread_id

        self.thread_id = resume_thread or self.thread_id or str(uuid.uuid4())
        self.session_id = str(uuid.uuid4())
        await self.sio.connect(
            self.base_url,
            socketio_path="/ws/socket.io",
            headers={"Cookie": self.cookie},
            auth={
                "sessionId": self.session_id,
                "threadId": self.thread_id,
                "clientType": "webapp",
                "userEnv": "{}",
            },
            transports=["websocket"],
            # As long as the browser's socket.io client waits for the handshake (20 s);
            # python-socketio's own 1 s fails the client, not the app, under load.
            wait_timeout=20,
        )
        await self.sio.emit("connection_successful")
        if resume_thread:
            await asyncio.wait_for(self._resumed.wait(), 20)
        else:
            # on_chat_start's task ends after it sends the welcome message. Other tasks may
            # end first (connection handling), and a task_end that came in after send()
            # cleared the flag would end that turn with nothing: wait for this one.
            await wait_until(self._chat_started, 20, "the welcome message and its task_end")

    def _chat_started(self) -> bool:
        welcomed = False
        for event, data in self.events:
            if event == "new_message" and "Welcome to Atelier" in (data or {}).get("output", ""):
                welcomed = True
            elif event == "task_end" and welcomed:
                return True
        return False

    def upload(self, filename: str, data: bytes, mime: str) -> dict[str, Any]:
        """POST a file the way the browser's attach button does; returns a file reference."""
        response = httpx.post(
            f"{self.base_url}/project/file",
            params={"session_id": self.session_id},
            files={"file": (filename, data, mime)},
            headers={"Cookie": self.cookie},
            timeout=30,
        )
        response.raise_for_status()
        return {"id": response.json()["id"]}

    async def send(
        self,
        text: str,
        command: str | None = None,
        timeout: float = 60,
        files: list[dict[str, Any]] | None = None,
    ) -> list[dict]:
        """Send a user message; return the messages the app produced for it."""
        before = len(self.order)
        self._task_end.clear()
        await self.emit_message(text, command, files)
        await asyncio.wait_for(self._task_end.wait(), timeout)
        return [self.messages[i] for i in self.order[before:]]

    async def emit_message(
        self,
        text: str,
        command: str | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> None:
        """Emit a user message as the browser does, without waiting for the app's turn
        (a refused message has none)."""
        message = {
            "id": str(uuid.uuid4()),
            "threadId": self.thread_id,
            "type": "user_message",
            "name": "user",
            "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        if command:
            message["command"] = command
        await self.sio.emit("client_message", {"message": message, "fileReferences": files})

    async def change_settings(self, values: dict[str, Any], timeout: float = 20) -> list[dict]:
        """Submit the settings panel as the browser does; returns the app's messages."""
        before, seen = len(self.order), len(self.events)
        await self.sio.emit("chat_settings_change", values)
        # Chainlit runs the handler as a task: its task_end comes after the reply, and
        # must arrive before the next send() starts waiting for that turn's own.
        await wait_until(
            lambda: any(event == "task_end" for event, _ in self.events[seen:]),
            timeout,
            "the settings update to finish",
        )
        return [self.messages[i] for i in self.order[before:]]

    def panel(self) -> list[dict[str, Any]]:
        """The most recent settings panel the app sent (its widgets)."""
        panels = [data for event, data in self.events if event == "chat_settings"]
        assert panels, "the app sent no settings panel"
        return panels[-1]

    async def close(self) -> None:
        await self.sio.disconnect()


async def connected_session(
    base_url: str, username: str = "admin", password: str = ADMIN_PASSWORD
) -> ChatSession:
    """Logged in and connected to a new chat (its welcome received): how a test begins."""
    chat = ChatSession(base_url, login_cookie(base_url, username, password))
    await chat.connect()
    return chat


def outputs(messages: list[dict]) -> list[str]:
    return [m.get("output") or "" for m in messages]
