"""Errors of the HTTP API (/v1, /api/v1) in OpenAI's envelope, so every client shows them.

OpenAI answers errors as `{"error": {"message", "type", "param", "code"}}` with the HTTP
status saying what kind (shared/notes/hosted-apis.md, read from the openai 3.5x client
and its capture servers). Observed in OpenAI's own answers (public error logs found with
the search tool, 2026-12): 401 `type "invalid_request_error", code "invalid_api_key"`;
429 `type "requests", code "rate_limit_exceeded"` with a `retry-after` header; safety
refusals 400 `code "moderation_blocked"`; 5xx `type "server_error"`. The `openai` SDK
picks its exception class from the status (AuthenticationError for 401, RateLimitError
for 429 ...) and shows `error.message`, so the message is written for the person
reading it.

`ApiRoute` is the route class of the API's routers: whatever a handler raises, the
client gets this envelope. The core's errors (core/errors.py) carry messages written to
be shown; anything else is logged and answered with a generic 500 that reveals nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from core.errors import (
    AccessDenied,
    AtelierError,
    BackendNotConfigured,
    BackendUnavailable,
    ContentRefused,
    InvalidInput,
    ModelRetired,
    ModelUnavailable,
    NotFound,
    QuotaExhausted,
    RateLimited,
)
from core.logging_setup import get_logger

log = get_logger(__name__)

_NO_STORE = {"Cache-Control": "no-store"}
_SERVER_FAULT = "The server had an error while processing your request."


class ApiError(Exception):
    """An API answer other than success: status, message (shown), and OpenAI's fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


def envelope(exc: ApiError) -> dict[str, Any]:
    """The JSON body of an error, as OpenAI writes it (also an SSE `error` event's data)."""
    return {
        "error": {
            "message": exc.message,
            "type": exc.type,
            "param": exc.param,
            "code": exc.code,
        }
    }


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(envelope(exc), status_code=exc.status, headers={**_NO_STORE, **exc.headers})


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait: whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def unauthorized(message: str = "Incorrect API key provided.") -> ApiError:
    """401 as OpenAI answers a bad key: the openai SDK raises AuthenticationError."""
    return ApiError(
        401,
        message,
        code="invalid_api_key",
        headers={"WWW-Authenticate": 'Bearer realm="atelier"'},
    )


def from_core(exc: AtelierError) -> ApiError | None:
    """The API answer for a core error; None for a fault of ours (a 500)."""
    from memory.ledger import BudgetExceeded  # the ledger's own error, not core's
    from tools.spending import Declined

    message = exc.message
    if isinstance(exc, BudgetExceeded):
        return ApiError(400, message, code="budget_exceeded")
    if isinstance(exc, Declined):
        return ApiError(400, message, code="confirmation_required")
    if isinstance(exc, ModelUnavailable | ModelRetired):
        return ApiError(404, message, code="model_not_found", param="model")
    if isinstance(exc, InvalidInput):
        return ApiError(400, message)
    if isinstance(exc, NotFound):
        return ApiError(404, message, code="not_found")
    if isinstance(exc, AccessDenied):
        return ApiError(403, message, type="permission_error", code="access_denied")
    if isinstance(exc, ContentRefused):
        return ApiError(400, message, code="moderation_blocked")
    if isinstance(exc, RateLimited):  # the provider's limit, shared by every user
        wait = retry_after(exc.retry_after_s) if exc.retry_after_s else {}
        return ApiError(429, message, type="requests", code="rate_limit_exceeded", headers=wait)
    if isinstance(exc, QuotaExhausted | BackendNotConfigured):  # the operator must act
        return ApiError(503, message, type="server_error", code="backend_unavailable")
    if isinstance(exc, BackendUnavailable):
        return ApiError(502, message, type="server_error", code="backend_unavailable")
    return None


def validation_error(exc: RequestValidationError) -> ApiError:
    """400 naming the first failing field in `param`, as OpenAI's validation does."""
    errors = exc.errors()
    if not errors:
        return ApiError(400, "The request is not valid.")
    first = errors[0]
    param = _param(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return ApiError(400, "The request body is not valid JSON.")
    if first.get("type") == "missing" and param:
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    what = str(first.get("msg", "is not valid")).rstrip(".")
    message = f"Invalid value for '{param}': {what}." if param else f"{what}."
    return ApiError(400, message, param=param)


def _param(loc: Sequence[Any]) -> str | None:
    """`("body", "messages", 0, "content")` -> `messages[0].content`."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        parts = parts[1:]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def answer(exc: Exception, request: Request) -> Response:
    """The envelope for anything a route raised (see the module's docstring)."""
    # FastAPI wraps an error raised while it reads the body (the size limit) in a 400.
    exc = exc.__cause__ if isinstance(exc.__cause__, ApiError) else exc
    if isinstance(exc, ApiError):
        api_error: ApiError | None = exc
    elif isinstance(exc, AtelierError):
        api_error = from_core(exc)
        if api_error is None:
            log.error("api_failed", path=request.url.path, error=type(exc).__name__)
            api_error = ApiError(500, exc.message, type="server_error")
    elif isinstance(exc, HTTPException):
        api_error = ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
    elif isinstance(exc, RequestValidationError):
        api_error = validation_error(exc)
    else:
        log.exception("api_crashed", path=request.url.path, error=type(exc).__name__)
        api_error = ApiError(500, _SERVER_FAULT, type="server_error")
    if api_error.status < 500:
        log.info(
            "api_refused",
            path=request.url.path,
            status=api_error.status,
            code=api_error.code,
        )
    return error_response(api_error)


class ApiRoute(APIRoute):
    """Route class for the API's routers: every error leaves as OpenAI's envelope, and
    every body stops at ATELIER_API_MAX_REQUEST_MB (413) while it arrives."""

    # A route class of its own may set a smaller limit (bytes); None: the setting's.
    max_body_bytes: int | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        fixed = self.max_body_bytes

        async def route(request: Request) -> Response:
            from chat_app.api_limits import limit_body, max_request_bytes

            try:
                limit = fixed if fixed is not None else max_request_bytes()
                return await handle(limit_body(request, limit))
            except Exception as exc:  # answered (and logged when ours) by `answer`
                return answer(exc, request)

        return route
