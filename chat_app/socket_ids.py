"""The Socket.IO handshake: ids from the client checked, the data layer told who it is.

Chainlit's `connect` handler takes `sessionId` and `threadId` from the client as given:

- the session id becomes a folder name (`.files/<sessionId>`), which Chainlit creates on
  upload and deletes with `shutil.rmtree` when the session is cleared: an absolute path
  or `../..` there would point both at any folder the server can write;
- a malformed thread id made the data layer raise inside the handshake (a server error,
  "Unexpected connection error" for the client);
- it reads the thread to check its author before any Chainlit context exists, so the
  data layer would not know who is asking (memory/requester.py).

So, before Chainlit's handler runs: the session id must be a UUID in canonical form (the
front end makes them with `crypto.randomUUID()`), the thread id a UUID (passed on in
canonical form), and the handler runs `acting_as` the cookie's user. Anything else is
refused with a plain reason.

A thread id that is someone else's conversation is not refused but replaced by a fresh
one: a refused socket leaves the page dead under "Could not reach the server". Such a
thread, like one that does not exist, is then answered as Chainlit answers a thread it
cannot resume (a "Couldn't resume chat" toast and a new chat), in plain words that do
not tell which of the two it was.
"""

from __future__ import annotations

import uuid
from typing import Any

from socketio.exceptions import ConnectionRefusedError  # its reason reaches the client

from chat_app.request_user import stored_user, token_from_environ
from chat_app.runtime import get_runtime
from core.errors import InvalidInput
from core.logging_setup import get_logger
from memory.ids import require_uuid
from memory.requester import acting_as

log = get_logger(__name__)
NAMESPACE = "/"
UNAVAILABLE = "This conversation does not exist, or it belongs to another account."
_UNAVAILABLE_KEY = "atelier.thread_unavailable"  # in the handshake's environ


def _canonical(value: object, what: str) -> str:
    try:
        canonical = require_uuid(value, what)
    except InvalidInput:
        log.warning("socket_id_refused", what=what)
        raise ConnectionRefusedError(f"invalid {what}") from None
    return canonical


def check_auth(auth: Any) -> dict[str, Any]:
    """The handshake's auth with checked ids; raises ConnectionRefusedError otherwise."""
    if not isinstance(auth, dict):
        raise ConnectionRefusedError("missing session")
    if _canonical(auth.get("sessionId"), "session id") != auth["sessionId"]:
        log.warning("socket_id_refused", what="session id")
        raise ConnectionRefusedError("invalid session id")
    if not isinstance(auth.get("clientType"), str):
        raise ConnectionRefusedError("missing client type")
    for key in ("userEnv", "chatProfile"):
        if auth.get(key) is not None and not isinstance(auth[key], str):
            raise ConnectionRefusedError(f"invalid {key}")
    thread_id = auth.get("threadId") or None
    if thread_id is not None:
        thread_id = _canonical(thread_id, "thread id")
    return {**auth, "threadId": thread_id}


def install(sio: Any) -> None:
    """Put the checks in front of Chainlit's `connect` (call after mounting Chainlit)."""
    chainlit_connect = sio.handlers[NAMESPACE]["connect"]

    async def connect(sid: str, environ: dict, auth: Any = None) -> Any:
        auth = check_auth(auth)
        user = await stored_user(token_from_environ(environ))
        if user is None:  # Chainlit refuses the connection: "authentication failed"
            return await chainlit_connect(sid, environ, auth)
        thread_id = auth["threadId"]
        if thread_id is not None:
            author = await get_runtime().data_layer.get_thread_author(thread_id)
            if author != user.identifier:
                environ[_UNAVAILABLE_KEY] = True
            if author and author != user.identifier:
                log.warning("socket_thread_refused", thread_id=thread_id)
                auth = {**auth, "threadId": str(uuid.uuid4())}
        with acting_as(user.identifier, user.id):
            return await chainlit_connect(sid, environ, auth)

    sio.on("connect", connect, namespace=NAMESPACE)
    _install_resume_answer(sio)


def _install_resume_answer(sio: Any) -> None:
    """Say in plain words why a thread asked for cannot be resumed (see the module doc).

    Only where Chainlit itself would try to resume it: the first `connection_successful`
    of a session that asked for a thread (a reconnect of a session that has not begun
    its chat starts no resume; the marker is used once).
    """
    from chainlit.session import WebsocketSession

    chainlit_successful = sio.handlers[NAMESPACE]["connection_successful"]

    async def connection_successful(sid: str, *args: Any) -> Any:
        session = WebsocketSession.get(sid)
        environ = getattr(session, "environ", None) or {}
        if (
            environ.pop(_UNAVAILABLE_KEY, False)
            and session.thread_id_to_resume
            and not (session.restored and not session.has_first_interaction)
        ):
            session.thread_id_to_resume = None  # Chainlit starts a new chat instead
            await sio.emit("resume_thread_error", UNAVAILABLE, to=sid)
        return await chainlit_successful(sid, *args)

    sio.on("connection_successful", connection_successful, namespace=NAMESPACE)
