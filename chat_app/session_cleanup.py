"""Chainlit's list of every message of every session, emptied: nothing here reads it.

Chainlit (2.12) adds each message sent or received to `chainlit.chat_context.chat_contexts`,
a module-level dict of lists keyed by session id, for its `cl.chat_context` API, message
editing and favourites. It never removes an entry: not after a turn, not when the socket
ends, not when the session is cleared or expires. Every message of every session stayed
in memory for the life of the process, with its text, metadata and elements
(benchmarks/memory_growth.py measured it as most of the app's growth per turn).

The app reads none of it: the agent's history is rebuilt from the database every turn
(chat_app/conversation.py), and editing and favourites are off (.chainlit/config.toml).
So a session's list is dropped when each of its turns ends and when its socket ends,
together with the list of any session Chainlit no longer has (a message sent after a
disconnect starts a new one). Were editing or favourites turned on, Chainlit would read
the list while its session lives: then only the lists of sessions that are gone are
dropped, and a long session's list grows as Chainlit intends.

A session whose socket just closed (a closed tab, a lost connection) is kept by Chainlit
for `session_timeout` (an hour) in case the browser reconnects. It kept the request it
connected with (`environ`), and through it the closed connection: the server's protocol
object, its buffers, queues and headers. A reconnect brings its own request
(chainlit/socket.py `restore_existing_session`), so a kept session keeps only the plain
headers.

Installed like chat_app/socket_guard.py: by wrapping Chainlit's Socket.IO handlers, after
mounting, so it works whatever handlers.py registers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

NAMESPACE = "/"

Handler = Callable[..., Awaitable[Any]]


def chainlit_reads_messages() -> bool:
    """Whether Chainlit reads the lists: only for message editing and favourites."""
    from chainlit.config import config

    return bool(config.features.edit_message or config.features.favorites)


def forget(session_id: str) -> None:
    """Drop a session's list of messages, unless Chainlit may still read it."""
    from chainlit.chat_context import chat_contexts

    if not chainlit_reads_messages():
        chat_contexts.pop(session_id, None)


def forget_gone() -> int:
    """Drop the lists of sessions Chainlit no longer has (cleared or expired); how many."""
    from chainlit.chat_context import chat_contexts
    from chainlit.session import ws_sessions_id

    gone = [session_id for session_id in chat_contexts if session_id not in ws_sessions_id]
    for session_id in gone:
        chat_contexts.pop(session_id, None)
    return len(gone)


def release_connection(session: Any) -> None:
    """Keep only the plain headers of a kept session's request (not the connection)."""
    session.environ = {k: v for k, v in (session.environ or {}).items() if isinstance(v, str)}


def after_turn(handler: Handler) -> Handler:
    """Chainlit's `client_message` handler, then: when the turn's task ends, forget."""
    from chainlit.session import WebsocketSession

    async def client_message(sid: str, *args: Any) -> Any:
        result = await handler(sid, *args)
        session = WebsocketSession.get(sid)
        task = session.current_task if session is not None else None
        if task is not None:  # the turn runs in this task (chainlit/socket.py)
            session_id = session.id
            task.add_done_callback(lambda _: forget(session_id))
        return result

    return client_message


def after_disconnect(handler: Handler) -> Handler:
    """Chainlit's `disconnect` handler (on_chat_end, persisting, clearing), then forget
    this session's list and those of sessions that are gone; a session kept for a
    reconnect lets go of its closed connection."""
    from chainlit.session import WebsocketSession

    async def disconnect(sid: str, *_: Any) -> Any:
        session = WebsocketSession.get(sid)
        try:
            return await handler(sid)  # Chainlit's takes the socket id only
        finally:
            if session is not None:
                forget(session.id)
                if WebsocketSession.get_by_id(session.id) is session:  # kept
                    release_connection(session)
            forget_gone()

    return disconnect


def install(sio: Any | None = None) -> None:
    """Wrap Chainlit's handlers; call after mounting (they exist from then on)."""
    if sio is None:
        from chainlit.server import sio
    handlers = sio.handlers.get(NAMESPACE, {})
    for event, wrap in (("client_message", after_turn), ("disconnect", after_disconnect)):
        if event not in handlers:
            raise RuntimeError(f"Chainlit registered no {event!r} handler to wrap")
        sio.on(event, wrap(handlers[event]), namespace=NAMESPACE)
