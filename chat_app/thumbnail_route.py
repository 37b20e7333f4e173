"""GET /thumbs/<key>: a stored image's WebP thumbnail, for its owner only.

The same owner check as /media (a thread of the requester's references the key), so a
thumbnail can never show what the full file would not; made in one query from the
login's identifier (memory/thumbnails.thumbnail_source), since a grid asks for hundreds.
They never change, so each carries a strong ETag (known without touching the disk) and a
private cache lifetime; a revalidation answers 304 after the owner check. A clip's key
is answered with its poster's thumbnail.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from chat_app.request_user import token_from_scope
from chat_app.runtime import get_runtime
from chat_app.session_guard import claims_of
from core.errors import NotFound
from memory.ids import require_media_key
from memory.media_store import MediaStorage
from memory.thumbnails import Thumbnails, thumbnail_source

router = APIRouter()

_HEADERS = {
    "Cache-Control": "private, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
}


@lru_cache(maxsize=4)
def thumbnails_for(media: MediaStorage) -> Thumbnails:
    """One Thumbnails per media store in this process, so first requests share work."""
    return Thumbnails(media)


def _not_found() -> HTTPException:
    return HTTPException(status_code=404, detail="Not found")


@router.get("/thumbs/{key}")
async def thumbnail(key: str, request: Request) -> Response:
    runtime = get_runtime()
    try:
        key = require_media_key(key)
    except NotFound:
        raise _not_found() from None
    # A revoked session's cookie never gets here (SessionMiddleware takes it out).
    claims = claims_of(token_from_scope(request.scope))
    if claims is None:
        raise HTTPException(status_code=401, detail="Log in to see this file.")
    source = await thumbnail_source(runtime.engine, claims.identifier, key)
    if source is None:
        raise _not_found()
    thumbs = thumbnails_for(runtime.media)
    headers = {**_HEADERS, "ETag": thumbs.etag(source)}
    if _matches(headers["ETag"], request.headers.get("if-none-match")):
        return Response(status_code=304, headers=headers)
    try:
        data = await thumbs.read(source)
    except NotFound:
        raise _not_found() from None
    return Response(data, media_type="image/webp", headers=headers)


def _matches(etag: str, header: str | None) -> bool:
    """If-None-Match: `*` or a list of tags (weak comparison, as RFC 9110 asks)."""
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return etag in tags or "*" in tags
