"""The gallery's HTTP side: the page at /gallery and its JSON API under /api/gallery.

Every route answers for the logged-in user only: the core (memory/gallery.py,
lineage.py, gallery_actions.py) scopes each read and write to that user, and someone
else's id is NotFound, so it answers 404 exactly like an id that does not exist.
Errors answer `{"error": {"message": ...}}` with the core error's own message (written to
be shown): 400 InvalidInput, 401 not logged in, 404 NotFound; 403 for a state-changing
request without proof of intent (chat_app/api_requests.py), 413 for a body too large.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask

from chat_app import gallery_json
from chat_app.api_requests import read_json, require_intent
from chat_app.http_errors import status_for
from chat_app.request_user import stored_user, token_from_scope
from chat_app.runtime import Runtime, get_runtime
from chat_app.thumbnail_route import thumbnails_for
from core.errors import AccessDenied, AtelierError, BackendError, InvalidInput, NotFound
from core.logging_setup import get_logger
from memory.gallery import PAGE_DEFAULT, PAGE_MAX, Gallery, GalleryFilters

if TYPE_CHECKING:  # numpy behind it: not imported at start-up (test_startup_imports)
    from pipelines.scoring.likeness import Likeness

log = get_logger(__name__)

MAX_DOWNLOAD_IDS = 500  # as memory/gallery_export.MAX_ITEMS; checked here before any query
OVERSAMPLE = 5  # likeness answers asked for per one shown, when filters are given
MAX_SIMILAR = 1000
# Query parameters the routes read themselves; the rest are filters (GalleryFilters).
_PAGING = ("cursor", "limit")
_SIMILAR = ("q", "like", "k")


def _error(status: int, message: str) -> Response:
    return gallery_json.JSON({"error": {"message": message}}, status_code=status)


class GalleryRoute(APIRoute):
    """Turns the core's errors (and FastAPI's own refusals) into the JSON error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handle(request)
            except AtelierError as exc:
                status = status_for(exc)
                if status is None and isinstance(exc, BackendError):
                    status = 503  # the CLIP model could not run: said, not a traceback
                    log.warning("gallery_backend_failed", error=type(exc).__name__)
                if status is None:  # not the client's doing: a server error stands
                    raise
                log.info("gallery_refused", path=request.url.path, status=status)
                return _error(status, exc.message)
            except HTTPException as exc:
                return _error(exc.status_code, str(exc.detail))
            except RequestValidationError as exc:
                return _error(400, _validation_message(exc))

        return answer


router = APIRouter(route_class=GalleryRoute)


# ------------------------------------------------------------------ wiring


@dataclass(frozen=True)
class GalleryServices:
    runtime: Runtime
    gallery: Gallery
    likeness: Likeness | None  # `available` False without the local extra


def services() -> GalleryServices:
    """The one place the routes find the gallery's objects (built once with the runtime)."""
    runtime = get_runtime()
    gallery = runtime.services.gallery
    assert gallery is not None  # build_runtime always sets it
    return GalleryServices(runtime, gallery, runtime.services.likeness)


async def requester(request: Request) -> str:
    user = await stored_user(token_from_scope(request.scope))
    if user is None:
        raise AccessDenied("Log in to see your gallery.")
    return user.id


UserId = Annotated[str, Depends(requester)]
Intent = Depends(require_intent)


# ------------------------------------------------------------------ the page


@router.get("/gallery", include_in_schema=False)
async def page(request: Request) -> Response:
    if await stored_user(token_from_scope(request.scope)) is None:
        return RedirectResponse("/login", status_code=303)
    path = _public_dir() / "gallery.html"
    if not path.is_file():
        raise NotFound("The gallery page is not installed.")
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


def _public_dir() -> Path:
    """Where Chainlit serves /public from, so the page and its scripts come from one place."""
    from chainlit.config import APP_ROOT

    return Path(APP_ROOT) / "public"


# ------------------------------------------------------------------ reading


@router.get("/api/gallery/capabilities")
async def capabilities(user_id: UserId) -> Response:
    likeness = services().likeness
    available = _usable(likeness)
    help_text = "" if available else _how_to_enable(likeness)
    return gallery_json.JSON({"likeness": available, "likeness_help": help_text})


def _usable(likeness: Likeness | None) -> bool:
    return likeness is not None and likeness.available


def _how_to_enable(likeness: Likeness | None) -> str:
    text = likeness.how_to_enable if likeness is not None else None
    return text or (
        "Search by likeness needs the local extra: pip install 'atelier[local]', "
        "then run `atelier gallery backfill` once for older images."
    )


@router.get("/api/gallery/items")
async def items(request: Request, user_id: UserId) -> Response:
    params = request.query_params
    filters = _filters(params, skip=_PAGING)
    found = await services().gallery.page(
        user_id, filters, cursor=params.get("cursor") or None, limit=_limit(params)
    )
    return gallery_json.JSON(
        {"items": [gallery_json.item(i) for i in found.items], "next_cursor": found.next_cursor}
    )


@router.get("/api/gallery/similar")
async def similar(request: Request, user_id: UserId) -> Response:
    params = request.query_params
    text, like = (params.get("q") or "").strip(), (params.get("like") or "").strip()
    if bool(text) == bool(like):
        raise InvalidInput("Give either q (words to search by likeness) or like (an image id).")
    found = services()
    if not _usable(found.likeness):
        raise InvalidInput(_how_to_enable(found.likeness))
    assert found.likeness is not None  # _usable said so
    filters = _filters(params, skip=_PAGING + _SIMILAR)
    k = _limit(params, name="k")
    # The filters apply to the likeness answer, so ask for more when they may drop some.
    wanted = k if filters == GalleryFilters() else min(k * OVERSAMPLE, MAX_SIMILAR)
    if text:
        ranked = await found.likeness.search_text(user_id, text, k=wanted)
    else:
        ranked = await found.likeness.more_like(user_id, like, k=wanted)
    similarity = dict(ranked)
    shown: list[dict[str, Any]] = []
    for start in range(0, len(ranked), PAGE_MAX):  # one filtered query per PAGE_MAX ids
        ids = tuple(image_id for image_id, _ in ranked[start : start + PAGE_MAX])
        page = await found.gallery.page(user_id, replace(filters, ids=ids), limit=len(ids))
        shown += [{**gallery_json.item(i), "similarity": similarity[i.id]} for i in page.items]
    shown.sort(key=lambda entry: entry["similarity"], reverse=True)
    shown = shown[:k]
    return gallery_json.JSON({"items": shown, "next_cursor": None})


@router.get("/api/gallery/items/{item_id}")
async def item_detail(item_id: str, user_id: UserId) -> Response:
    found = await services().gallery.detail(user_id, item_id)
    return gallery_json.JSON(gallery_json.detail(found))


@router.get("/api/gallery/items/{item_id}/lineage")
async def item_lineage(item_id: str, user_id: UserId) -> Response:
    from memory.lineage import family

    found = await family(services().runtime.engine, user_id, item_id)
    return gallery_json.JSON(gallery_json.lineage(found))


# ------------------------------------------------------------------ acting


@router.post("/api/gallery/items/{item_id}/star", dependencies=[Intent])
async def star(item_id: str, request: Request, user_id: UserId) -> Response:
    from memory.gallery_actions import set_kept

    body = await read_json(request)
    kept = body.get("kept") if isinstance(body, dict) else None
    if not isinstance(kept, bool):
        raise InvalidInput('Send {"kept": true} or {"kept": false}.')
    found = services()
    await set_kept(found.runtime.engine, user_id, item_id, kept)
    return gallery_json.JSON(gallery_json.item(await _own_item(found.gallery, user_id, item_id)))


@router.delete("/api/gallery/items/{item_id}", dependencies=[Intent])
async def delete(item_id: str, user_id: UserId) -> Response:
    from memory.gallery_actions import delete_item

    runtime = services().runtime
    gone = await delete_item(
        runtime.engine,
        runtime.media,
        user_id,
        item_id,
        thumbnails=thumbnails_for(runtime.media),  # removed files' thumbnails go too
    )
    return gallery_json.JSON({"deleted": gone.id})


@router.post("/api/gallery/download", dependencies=[Intent])
async def download(request: Request, user_id: UserId) -> Response:
    from memory.gallery_export import zip_items

    ids = _ids(await read_json(request))
    found = services()
    archive = await zip_items(found.gallery, found.runtime.media, user_id, ids)
    name = f"atelier-gallery-{datetime.now(UTC):%Y%m%d-%H%M%S}.zip"
    headers = {
        "Content-Disposition": f'attachment; filename="{name}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    # A temporary file (memory stays small whatever the selection weighs): streamed from
    # disk in chunks, then removed.
    return FileResponse(
        archive,
        media_type="application/zip",
        headers=headers,
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.post("/api/gallery/items/{item_id}/new-conversation", dependencies=[Intent])
async def new_conversation(item_id: str, user_id: UserId) -> Response:
    from memory.gallery_actions import reuse_in_new_conversation

    found = services()
    thread_id = await reuse_in_new_conversation(
        found.runtime.engine,
        found.runtime.media,
        user_id,
        item_id,
        images=found.runtime.services.images,
    )
    return gallery_json.JSON(
        {"thread_id": thread_id, "url": gallery_json.conversation_url(thread_id)}
    )


# ------------------------------------------------------------------ helpers


def _filters(params: Any, skip: tuple[str, ...]) -> GalleryFilters:
    return GalleryFilters.from_query({k: v for k, v in params.items() if k not in skip})


def _limit(params: Any, name: str = "limit") -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return PAGE_DEFAULT
    if not raw.isdigit() or not 1 <= int(raw) <= PAGE_MAX:
        raise InvalidInput(f"Invalid {name}: expected a whole number from 1 to {PAGE_MAX}.")
    return int(raw)


def _ids(body: Any) -> list[str]:
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids:
        raise InvalidInput('Send {"ids": [...]} with the ids of the items to download.')
    if len(ids) > MAX_DOWNLOAD_IDS:
        raise InvalidInput(f"Download at most {MAX_DOWNLOAD_IDS} items at a time.")
    if not all(isinstance(i, str) for i in ids):
        raise InvalidInput("Each id to download must be text.")
    return ids


async def _own_item(gallery: Gallery, user_id: str, item_id: str) -> Any:
    found = await gallery.items(user_id, [item_id])
    if not found:
        raise NotFound("No such image or clip in your gallery.")
    return found[0]


def _validation_message(exc: RequestValidationError) -> str:
    first = next(iter(exc.errors()), {})
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path"))
    return f"Invalid {where or 'request'}: {first.get('msg', 'not accepted')}."
