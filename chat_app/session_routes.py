"""GET /project/thread, PUT/DELETE /project/element and POST /project/action: checked
before Chainlit's code.

Chainlit's versions look the `sessionId` up and use the result unchecked, and index the
element or action dict without checking its keys: an unknown session id, a malformed one
or a missing key answered HTTP 500. These run first (our routes come before the mount),
answer a clean 404/401/400 for any of that, and then call Chainlit's own functions with
the same arguments, so what a valid call does is unchanged.

Someone else's conversation is answered like one that does not exist (404, in plain
words): Chainlit answered it 401, and its front end takes any 401 for a lost login.
"""

from __future__ import annotations

from typing import Annotated, Any

from chainlit.auth import get_current_user
from chainlit.types import CallActionRequest, ElementRequest
from fastapi import APIRouter, Depends, HTTPException, Request

from chat_app.runtime import get_runtime
from chat_app.session_access import own_session
from chat_app.socket_ids import UNAVAILABLE
from memory.ids import is_uuid

router = APIRouter()
CurrentUser = Annotated[Any, Depends(get_current_user)]


def _bad(what: str) -> HTTPException:
    return HTTPException(status_code=400, detail=f"Invalid {what}.")


def _check_element(payload: ElementRequest, user: Any) -> None:
    """Refuse what Chainlit would crash on; a custom element is one of the session's
    conversation (Chainlit would otherwise store it under the thread id "")."""
    session = own_session(payload.sessionId, user)
    element = payload.element
    if not isinstance(element.get("type"), str):
        raise _bad("element type")
    if element["type"] != "custom":
        return  # Chainlit answers {"success": false} for these without touching them
    if not is_uuid(element.get("id")):
        raise _bad("element id")
    for key in ("name", "display"):
        if not isinstance(element.get(key), str):
            raise _bad(f"element {key}")
    if element.get("forId") and not is_uuid(element["forId"]):
        raise _bad("element forId")
    if element.get("threadId") in (None, ""):
        element["threadId"] = session.thread_id
    elif element["threadId"] != session.thread_id:
        raise _bad("element threadId: not this conversation's")
    if not isinstance(element.get("props") or {}, dict):
        raise _bad("element props")


@router.get("/project/thread/{thread_id}")
async def get_thread(request: Request, thread_id: str, current_user: CurrentUser) -> Any:
    from chainlit.server import get_thread as chainlit_get_thread

    author = await get_runtime().data_layer.get_thread_author(thread_id)
    if not author or author != getattr(current_user, "identifier", None):
        raise HTTPException(status_code=404, detail=UNAVAILABLE)
    return await chainlit_get_thread(request, thread_id, current_user)


@router.put("/project/element")
async def update_element(payload: ElementRequest, current_user: CurrentUser) -> Any:
    from chainlit.server import update_thread_element

    _check_element(payload, current_user)
    return await update_thread_element(payload, current_user)


@router.delete("/project/element")
async def delete_element(payload: ElementRequest, current_user: CurrentUser) -> Any:
    from chainlit.server import delete_thread_element

    _check_element(payload, current_user)
    return await delete_thread_element(payload, current_user)


@router.post("/project/action")
async def call_action(payload: CallActionRequest, current_user: CurrentUser) -> Any:
    from chainlit.action import Action
    from chainlit.server import call_action as chainlit_call_action

    own_session(payload.sessionId, current_user)
    try:
        Action(**payload.action)
    except (TypeError, ValueError):
        raise _bad("action") from None
    if not isinstance(payload.action.get("name"), str):
        raise _bad("action name")
    return await chainlit_call_action(payload, current_user)
