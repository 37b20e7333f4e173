"""The logged-in user's own API tokens over HTTP (/api/tokens), and /api/v1/me.

`/api/tokens` lists, makes and revokes the user's tokens; `GET /api/v1/me` answers an
API client which user and token it acts as (to check a key before using it).

These routes take the login cookie only, never an API token: a token cannot make or
list tokens, so a leaked one cannot make itself a successor. State-changing requests
need proof of intent (chat_app/api_requests.py). Another user's token id is NotFound,
answered 404 like an id that does not exist. A new token is in the answer to the POST
that made it, and nowhere else ever again; every answer is `Cache-Control: no-store`.
Errors have the gallery's JSON shape (chat_app/gallery_routes.GalleryRoute).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from chat_app import gallery_json
from chat_app.api_auth import Caller
from chat_app.api_errors import ApiRoute
from chat_app.api_limits import admit
from chat_app.api_requests import read_json, require_intent
from chat_app.gallery_routes import GalleryRoute
from chat_app.request_user import stored_user, token_from_scope
from chat_app.runtime import get_runtime
from core.errors import AccessDenied, InvalidInput
from memory.api_tokens import ApiTokenRecord

router = APIRouter()  # the app includes this one: both routers below
_in_app = APIRouter(route_class=GalleryRoute)
_api = APIRouter(route_class=ApiRoute)

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_BODY = 'Send {"name": "what will use it", "expires_days": 30} (expires_days optional).'


async def requester(request: Request) -> str:
    """The logged-in user (login cookie, or the login JWT as a bearer; not an API token)."""
    user = await stored_user(token_from_scope(request.scope))
    if user is None:
        raise AccessDenied("Log in to manage your API tokens.")
    return user.id


UserId = Annotated[str, Depends(requester)]
Intent = Depends(require_intent)


def token_json(record: ApiTokenRecord) -> dict[str, Any]:
    """A token as its owner sees it: never the token itself, nor its hash."""
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "status": record.status,
        "created_at": gallery_json.iso(record.created_at),
        "expires_at": gallery_json.iso(record.expires_at),
        "last_used_at": gallery_json.iso(record.last_used_at),
        "revoked_at": gallery_json.iso(record.revoked_at),
    }


@_in_app.get("/api/tokens")
async def list_tokens(user_id: UserId) -> Response:
    records = await get_runtime().api_tokens.list(user_id)
    return gallery_json.JSON({"data": [token_json(r) for r in records]}, headers=_NO_STORE)


@_in_app.post("/api/tokens", dependencies=[Intent])
async def create_token(request: Request, user_id: UserId) -> Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise InvalidInput(_BODY)
    name, days = body.get("name"), body.get("expires_days")
    if not isinstance(name, str):
        raise InvalidInput(_BODY)
    if days is not None and (isinstance(days, bool) or not isinstance(days, int)):
        raise InvalidInput("expires_days is a whole number of days, or null for never.")
    record, token = await get_runtime().api_tokens.add(user_id, name, days)
    return gallery_json.JSON(
        {**token_json(record), "token": token}, status_code=201, headers=_NO_STORE
    )


@_in_app.delete("/api/tokens/{token_id}", dependencies=[Intent])
async def revoke_token(token_id: str, user_id: UserId) -> Response:
    record = await get_runtime().api_tokens.revoke(token_id, user_id)
    return gallery_json.JSON(token_json(record), headers=_NO_STORE)


@_api.get("/api/v1/me")
async def me(caller: Caller) -> Response:
    """Which user and token an API key acts as; counts against the token's rate."""
    await admit(caller)
    return gallery_json.JSON(
        {
            "object": "atelier.caller",
            "user": caller.user_name,
            "token": {"id": caller.token_id, "name": caller.token_name},
        },
        headers=_NO_STORE,
    )


router.include_router(_in_app)
router.include_router(_api)
