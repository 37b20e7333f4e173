"""An empty message is answered before Chainlit stores it, so it leaves no thread behind.

Chainlit stores every incoming message, and names a new conversation after it, before
our handler sees it; an empty one (no text, no command chip, no file) then left an
"Untitled Conversation" holding only the refusal. This runs in front of Chainlit's
`client_message` handler: such a message gets a toast saying what to do, and nothing
is stored or run. (A command chip with no text, `/cost` picked from the menu, is not
empty: it goes on to the command.)
"""

from __future__ import annotations

from typing import Any

from core.logging_setup import get_logger

log = get_logger(__name__)

NAMESPACE = "/"
EMPTY_MESSAGE = "Your message is empty. Describe the image you want, e.g. 'a fox in the snow'."


def is_empty(payload: Any) -> bool:
    """True for a message with no text, no command and no attached file."""
    if not isinstance(payload, dict) or not isinstance(payload.get("message"), dict):
        return False  # malformed: Chainlit refuses it as before
    message = payload["message"]
    text = message.get("output")
    return (
        not (text.strip() if isinstance(text, str) else text)
        and not message.get("command")
        and not payload.get("fileReferences")
    )


def install(sio: Any) -> None:
    """Put the check in front of Chainlit's `client_message` (call after mounting)."""
    chainlit_message = sio.handlers[NAMESPACE]["client_message"]

    async def client_message(sid: str, payload: Any = None) -> Any:
        if is_empty(payload):
            log.info("empty_message_refused")
            await sio.emit("toast", {"message": EMPTY_MESSAGE, "type": "info"}, to=sid)
            return None
        return await chainlit_message(sid, payload)

    sio.on("client_message", client_message, namespace=NAMESPACE)
