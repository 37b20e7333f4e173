"""PUT and DELETE /feedback: thumbs on the caller's own messages only.

Replaces Chainlit's two routes (ours come before the mount). Chainlit's called the data
layer with no hint of who was asking, so it checked no owner: one user could overwrite
or delete feedback on another user's message. And it turned every error into HTTP 500.
Here the call runs as the logged-in user (`acting_as`), the data layer checks that the
message, and any feedback id given, are that user's (memory/data_layer.py), and a
refusal answers 404 (someone else's, or no such thing), 400 (a malformed id) or 401.
"""

from __future__ import annotations

from typing import Annotated, Any

from chainlit.auth import get_current_user
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse

from chat_app.runtime import get_runtime
from chat_app.session_access import own_session
from core.logging_setup import get_logger
from memory.requester import acting_as

log = get_logger(__name__)
router = APIRouter()
CurrentUser = Annotated[Any, Depends(get_current_user)]


def _as(user: Any) -> Any:
    if user is None:
        raise HTTPException(status_code=401, detail="Log in to rate messages.")
    return acting_as(user.identifier, getattr(user, "id", None))


@router.put("/feedback")
async def update_feedback(update: UpdateFeedbackRequest, current_user: CurrentUser) -> JSONResponse:
    with _as(current_user):
        feedback_id = await get_runtime().data_layer.upsert_feedback(update.feedback)
    await _tell_app(update, current_user)
    return JSONResponse(content={"success": True, "feedbackId": feedback_id})


@router.delete("/feedback")
async def delete_feedback(
    payload: DeleteFeedbackRequest, current_user: CurrentUser
) -> JSONResponse:
    with _as(current_user):
        await get_runtime().data_layer.delete_feedback(payload.feedbackId)
    return JSONResponse(content={"success": True})


async def _tell_app(update: UpdateFeedbackRequest, user: Any) -> None:
    """Chainlit's `on_feedback` hook, if the app has one, in the caller's own session."""
    from chainlit.config import config
    from chainlit.context import init_ws_context

    if not config.code.on_feedback:
        return
    try:
        init_ws_context(own_session(update.sessionId, user))
        await config.code.on_feedback(update.feedback)
    except Exception as exc:  # as Chainlit: the feedback is stored; the hook is extra
        log.error("on_feedback_failed", error=type(exc).__name__)
