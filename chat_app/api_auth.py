"""Who an API request acts for: the `Authorization: Bearer atl_…` token, checked each time.

The API's routes take `Depends(api_caller)`. The token is looked up again on every
request (memory/api_tokens.py), so a revoked or expired token, or one whose user was
removed, is refused at its next request. Every refusal answers the same 401 (OpenAI's
`invalid_api_key`), whatever the reason, so a caller learns nothing about other users'
tokens. The token itself is never logged; only its id is, once it is known good.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from chat_app.api_errors import unauthorized
from chat_app.runtime import get_runtime
from memory.api_tokens import ApiCaller

__all__ = ["ApiCaller", "Caller", "api_caller", "bearer_token"]

_MISSING = (
    "You didn't provide an API key. Send it as 'Authorization: Bearer <token>'; "
    "make one with /tokens in the chat or `atelier tokens add`."
)
_BAD = "Incorrect API key provided. It may have been revoked or have expired."


def bearer_token(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def api_caller(request: Request) -> ApiCaller:
    """FastAPI dependency: the caller the bearer token names, else ApiError(401)."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized(_MISSING)
    caller = await get_runtime().api_tokens.authenticate(token)
    if caller is None:
        raise unauthorized(_BAD)
    request.state.api_caller = caller  # for logs and limits further down this request
    return caller


Caller = Annotated[ApiCaller, Depends(api_caller)]
