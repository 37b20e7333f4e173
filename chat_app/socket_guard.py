"""Open sockets end when their login session ends.

The handshake is checked by the session middleware, but a socket opened before a
revocation would otherwise live on. Two checks close it:

- every client event (a message, a settings change, a stop...) first checks the
  session of the socket's cookie (cached for a second, see session_guard.py);
- a sweep every `SWEEP_SECONDS` checks all connected sockets in one query, so an idle
  socket is cut within seconds; a logout in this process triggers it at once.

A cut socket gets a toast saying why, its running task is cancelled (nothing more is
made or spent for it), Chainlit is told to clear the session rather than keep it for a
reconnect, and it is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from chat_app.session_guard import Claims, SessionGuard, claims_of, token_from_cookie_header
from core.logging_setup import get_logger

log = get_logger(__name__)

SWEEP_SECONDS = 2.0
NAMESPACE = "/"
# The handshake is checked by the middleware. `clear_session` ("New chat", sent right
# before the socket closes) only asks that the session be dropped at the disconnect
# rather than kept for a reconnect (`session_timeout`, an hour), as `_cut` does for an
# ended login. Checked first (a database read once the cache is a second old), it could
# lose the race with that disconnect, and the session stayed in memory for the hour
# (2 of 5 times for a conversation with no message yet, whose disconnect awaits nothing).
_NOT_GUARDED = {"connect", "disconnect", "clear_session"}
ENDED_MESSAGE = (
    "Your login has ended (you logged out, the password was changed, or the account "
    "was removed). Log in again to continue."
)


def _claims(session: Any) -> Claims | None:
    """Claims of the cookie this socket connected with (its latest reconnect's)."""
    environ = getattr(session, "environ", None) or {}
    return claims_of(token_from_cookie_header(environ.get("HTTP_COOKIE")))


class SocketGuard:
    def __init__(self, guard: SessionGuard, sio: Any, sweep_seconds: float = SWEEP_SECONDS):
        self._guard = guard
        self._sio = sio
        self._sweep_seconds = sweep_seconds

    def install(self) -> None:
        """Put the session check in front of every Chainlit event handler.

        Call after Chainlit's socket module has registered its handlers (after mounting).
        """
        for event, handler in list(self._sio.handlers.get(NAMESPACE, {}).items()):
            if event not in _NOT_GUARDED:
                self._sio.on(event, self._checked(handler), namespace=NAMESPACE)

    def _checked(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(handler)
        async def checked(sid: str, *args: Any) -> Any:
            if not await self.allows(sid):
                return None
            result = handler(sid, *args)
            return await result if inspect.isawaitable(result) else result

        return checked

    async def allows(self, sid: str) -> bool:
        from chainlit.session import WebsocketSession

        session = WebsocketSession.get(sid)
        if session is None:  # Chainlit refuses events of unknown sockets itself
            return True
        if await self._guard.allows(_claims(session)):
            return True
        await self._cut(session)
        return False

    async def sweep(self) -> int:
        """Cut every connected socket whose session has ended; returns how many."""
        from chainlit.session import ws_sessions_id

        live = [
            (session, _claims(session))
            for session in list(ws_sessions_id.values())
            if self._sio.manager.is_connected(session.socket_id, NAMESPACE)
        ]
        if not live:
            return 0
        wanted = {c.session_id for _, c in live if c is not None and c.session_id}
        active = await self._guard.refresh(wanted)
        cut = 0
        for session, claims in live:
            ok = claims is not None and claims.session_id is not None
            if not ok or active.get(claims.session_id) != claims.identifier:
                await self._cut(session)
                cut += 1
        return cut

    async def run(self) -> None:
        """The sweep loop; runs for the app's lifetime (started in its lifespan).

        It must outlive any one failed round, or revocation would silently stop
        reaching open sockets: a failure is logged and the next round tries again.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._guard.ended.wait(), self._sweep_seconds)
            self._guard.ended.clear()
            try:
                await self.sweep()
            except SQLAlchemyError as exc:  # the database is unreachable
                log.error("session_sweep_failed", error=type(exc).__name__)
            except Exception as exc:  # a bug: keep sweeping, say so loudly
                log.exception("session_sweep_failed", error=type(exc).__name__)

    async def _cut(self, session: Any) -> None:
        user = session.user
        name = getattr(user, "identifier", None)
        log.warning("session_socket_cut", user=name, thread_id=session.thread_id)
        session.to_clear = True  # Chainlit deletes it on disconnect instead of keeping it
        user_id = getattr(user, "id", None)
        if user_id and not await self._guard.user_exists(user_id):
            # Removed with their conversations: Chainlit must not try to save this
            # session into a thread that no longer exists (it would fail mid-disconnect).
            session.has_first_interaction = False
        task = session.current_task
        if task is not None and not task.done():
            task.cancel()
        sid = session.socket_id
        await self._sio.emit("toast", {"message": ENDED_MESSAGE, "type": "error"}, to=sid)
        await self._sio.disconnect(sid, namespace=NAMESPACE)
