"""Rules for our JSON API's state-changing requests: proof of intent and bounded bodies.

The login is a cookie, so a page on another site could make the browser send a request
that stars, deletes or downloads with the user's login (cross-site request forgery). A
plain HTML form can only send form or text bodies, without custom headers, so a
state-changing request must carry `Content-Type: application/json` or the header
`X-Atelier: 1`; a browser sends neither cross-site without a CORS preflight, which this
app never grants. When the browser says where the request came from (`Origin`), that
must be this app's own origin (or one of the public origins configured at start-up).

Bodies are read with a limit while they arrive, so a huge id list costs nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request

from core.errors import InvalidInput

MAX_BODY_BYTES = 64 * 1024


def require_intent(request: Request) -> None:
    """Refuse (403) a state-changing request that a foreign page could have sent."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json" and request.headers.get("x-atelier") != "1":
        raise HTTPException(
            status_code=403,
            detail="Send this request as application/json or with the header X-Atelier: 1.",
        )
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request):
        raise HTTPException(status_code=403, detail="Cross-site requests are refused.")


def _same_origin(origin: str, request: Request) -> bool:
    if origin in _configured_origins():
        return True
    parts = urlsplit(origin)
    host = request.headers.get("host")
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host


def _configured_origins() -> list[str]:
    """The public origins given at start-up (`create_app`), never the wildcard."""
    from chainlit.config import config

    return [o for o in config.project.allow_origins or [] if o != "*"]


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The request's JSON body, refused with 413 once it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("The request body is not valid JSON.") from None


def _too_large(limit: int) -> HTTPException:
    return HTTPException(
        status_code=413, detail=f"The request body is larger than {limit // 1024} KB."
    )
