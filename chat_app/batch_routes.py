"""A batch over HTTP: its zip (images + manifest.csv), its contact sheet, its status.

The links in a batch's summary message point here. Each route answers for the
logged-in user's own batch only: the store scopes every read to that user, and another
user's batch id is NotFound, answered 404 with the same words as an id that does not
exist. Errors have the gallery's JSON shape (chat_app/gallery_routes.GalleryRoute).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from chat_app import gallery_json
from chat_app.gallery_routes import GalleryRoute
from chat_app.request_user import stored_user, token_from_scope
from chat_app.runtime import get_runtime
from core.errors import AccessDenied, InvalidInput
from tools.batch_runner import BatchRunner

router = APIRouter(route_class=GalleryRoute)

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


async def requester(request: Request) -> str:
    user = await stored_user(token_from_scope(request.scope))
    if user is None:
        raise AccessDenied("Log in to see your batches.")
    return user.id


UserId = Annotated[str, Depends(requester)]


def _runner() -> BatchRunner:
    runner = get_runtime().services.batches
    if runner is None:
        raise InvalidInput("Batches are not available in this app.")
    return runner


@router.get("/batches/{batch_id}/download")
async def download(batch_id: str, user_id: UserId) -> Response:
    from memory.batch_export import zip_batch

    runner = _runner()
    runtime = get_runtime()
    batch = await runner.store.get(batch_id, user_id)
    archive = await zip_batch(
        runner.store, runtime.media, runtime.services.images, batch.id, user_id
    )
    name = f"atelier-batch-{batch.id[:8]}.zip"
    return FileResponse(
        archive,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"', **_NO_STORE},
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.get("/batches/{batch_id}/contact-sheet")
async def contact_sheet(batch_id: str, user_id: UserId) -> Response:
    runner = _runner()
    batch = await runner.store.get(batch_id, user_id)
    sheet = await runner.contact_sheet(batch.id, user_id)
    return Response(sheet, media_type="image/png", headers=_NO_STORE)


@router.get("/batches/{batch_id}")
async def status(batch_id: str, user_id: UserId) -> Response:
    store = _runner().store
    batch = await store.get(batch_id, user_id)
    items = await store.items(batch.id, user_id)
    counts = {s: sum(item.status == s for item in items) for s in _ITEM_STATUSES}
    return gallery_json.JSON(
        {
            "id": batch.id,
            "title": batch.title,
            "status": batch.status,
            "stop_reason": batch.stop_reason,
            "item_count": batch.item_count,
            "counts": counts,
            "estimate_usd": str(batch.estimate_usd),
            "cost_usd": str(sum((item.cost_usd for item in items), Decimal(0))),
            "created_at": batch.created_at.isoformat(),
            "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
            "items": [_item(item) for item in items],
        },
        headers=_NO_STORE,
    )


_ITEM_STATUSES = ("pending", "running", "done", "failed")


def _item(item: Any) -> dict[str, Any]:
    return {
        "id": item.id,
        "position": item.position,
        "label": item.label,
        "status": item.status,
        "error": item.error,
        "image_ids": item.image_ids,
        "qc_passed": item.qc_passed,
        "qc_score": item.qc_score,
        "cost_usd": str(item.cost_usd),
        "attempts": len(item.attempts),
    }
