"""The project's errors as clean HTTP answers, on our routes and on Chainlit's.

Chainlit's routes let the data layer's errors escape as HTTP 500 with a traceback in
the log: a crafted element id (`InvalidInput`), someone else's thread (`NotFound`), a
call with no login (`AccessDenied`). They are the client's doing, so they answer 4xx with
the error's own message, which is written to be shown (core/errors.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from core.errors import AccessDenied, AtelierError, InvalidInput, NotFound
from core.logging_setup import get_logger

log = get_logger(__name__)

STATUS = {InvalidInput: 400, AccessDenied: 401, NotFound: 404}


def status_for(error: AtelierError) -> int | None:
    for kind, status in STATUS.items():
        if isinstance(error, kind):
            return status
    return None


async def _answer(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc) if isinstance(exc, AtelierError) else None
    if status is None:  # not the client's doing: let the server error stand
        raise exc
    log.info("http_refused", path=request.url.path, status=status, error=type(exc).__name__)
    return JSONResponse({"detail": str(exc)}, status_code=status)


def install(*apps: FastAPI) -> None:
    """Answer the client's errors with 4xx in each app (the parent and Chainlit's)."""
    for app in apps:
        for kind in STATUS:
            app.add_exception_handler(kind, _answer)
