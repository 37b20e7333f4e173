"""GET /media/<key>: stored files, for their owner (login cookie) or a signed link.

The owner check comes first, whatever holds the file; then the store says how to send
it (memory/media_store.py `answer`). HTTP Range requests work in every case: Safari will
not play a video without them, and every browser seeks in a clip with them. A local file
is sent as a file; an S3 object is streamed with the range passed on to S3, or (presign)
answered with a redirect to a link that expires within a minute.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from chat_app.request_user import stored_user
from chat_app.runtime import get_runtime
from core.errors import NotFound
from memory import signed_links
from memory.ids import require_media_key
from memory.media_store import Answer, Redirect, SendFile

router = APIRouter()

_HEADERS = {
    "Cache-Control": "private, max-age=86400",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
}


async def _requester_id(request: Request) -> str | None:
    from chainlit.auth.cookie import get_token_from_cookies

    # Nobody if the cookie is absent, expired, forged or malformed, or its user is gone.
    persisted = await stored_user(get_token_from_cookies(dict(request.cookies)))
    return persisted.id if persisted else None


@router.get("/media/{key}")
async def media(key: str, request: Request, exp: str | None = None, sig: str | None = None):
    runtime = get_runtime()
    try:
        key = require_media_key(key)
    except NotFound:
        raise HTTPException(status_code=404, detail="Not found") from None
    if signed_links.verify(runtime.auth_secret, key, exp, sig):
        mime = await runtime.services.images.media_mime(key)
    else:
        user_id = await _requester_id(request)
        if user_id is None:
            raise HTTPException(status_code=401, detail="Log in to see this file.")
        mime = await runtime.services.images.media_owner_ok(key, user_id)
    if mime is None:
        raise HTTPException(status_code=404, detail="Not found")
    try:
        answer = await asyncio.to_thread(
            runtime.media.answer, key, mime, request.headers.get("range")
        )
    except NotFound:
        raise HTTPException(status_code=404, detail="Not found") from None
    return _response(answer, mime)


def _response(answer: Answer, mime: str) -> Response:
    if isinstance(answer, SendFile):
        return FileResponse(answer.path, media_type=mime, headers=_HEADERS)
    if isinstance(answer, Redirect):
        # The link is valid for a minute: neither the browser nor a proxy may keep it.
        return RedirectResponse(answer.url, status_code=302, headers={"Cache-Control": "no-store"})
    return StreamingResponse(
        answer.chunks,
        status_code=answer.status,
        media_type=mime,
        headers={**_HEADERS, **answer.headers},
    )
