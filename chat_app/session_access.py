"""The caller's own live Chainlit session, named by a `sessionId` from the client.

Chainlit's routes that take a session id (upload, element, action) looked it up and
used it unchecked: an unknown or malformed id crashed them (HTTP 500). Session ids are
the UUIDs the front end makes (the socket handshake refuses any other, see
chat_app/socket_ids.py), so anything else is simply not found; a session of another
user is refused as Chainlit refuses it.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from core.logging_setup import get_logger
from memory.ids import is_uuid

log = get_logger(__name__)


def own_session(session_id: object, user: Any) -> Any:
    """The `WebsocketSession` of that id, if it is the user's; else 404 or 401."""
    from chainlit.session import WebsocketSession

    session = WebsocketSession.get_by_id(session_id) if is_uuid(session_id) else None
    if session is None:
        raise HTTPException(status_code=404, detail="Session not found")
    owner = getattr(session.user, "identifier", None)
    if user is None or owner is None or owner != user.identifier:
        log.warning("session_access_denied")
        raise HTTPException(status_code=401, detail="This session belongs to another login.")
    return session
