"""The gallery's JSON shapes: what the page (and anything else reading the API) gets.

Kept apart from the routes so the shapes are written once: an item carries its own
URLs (thumbnail, full file, conversation), so a client never builds paths itself.
Times are ISO with an offset (SQLite hands back naive UTC datetimes); money is a
string with six decimals, never a float.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from memory.gallery import GalleryDetail, GalleryItem
    from memory.lineage import Lineage


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.6f}"


def thumb_url(key: str | None) -> str | None:
    return f"/thumbs/{key}" if key else None


def conversation_url(thread_id: str) -> str:
    return f"/thread/{thread_id}"


def item(entry: GalleryItem) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "thread_id": entry.thread_id,
        "thumb_url": thumb_url(entry.thumb_key),
        "media_url": f"/media/{entry.media_key}",
        "prompt": entry.prompt,
        "model": entry.model,
        "backend": entry.backend,
        "width": entry.width,
        "height": entry.height,
        "cost_usd": money(entry.cost_usd),
        "created_at": iso(entry.created_at),
        "kept": entry.kept,
        "seconds": entry.seconds,
        "conversation_url": conversation_url(entry.thread_id),
    }


def detail(entry: GalleryDetail) -> dict[str, Any]:
    return {
        **item(entry.item),
        "prompt_typed": entry.prompt_typed,
        "prompt_sent": entry.prompt_sent,
        "parameters": entry.parameters,
        "seed": entry.seed,
        "duration_ms": entry.duration_ms,
        "parent_id": entry.parent_id,
        "source_image_id": entry.source_image_id,
        "scores": entry.scores,
        "curations": entry.curations,
        "loras": entry.loras,
        "style": entry.style,
        "thread_name": entry.thread_name,
    }


def lineage(family: Lineage) -> dict[str, Any]:
    return {
        "focus": family.focus,
        "nodes": [
            {
                "id": node.id,
                "kind": node.kind,
                "label": node.label,
                "operation": node.operation,
                "thumb_url": thumb_url(node.thumb_key),
                "created_at": iso(node.created_at),
                "focus": node.focus,
            }
            for node in family.nodes
        ],
        "edges": [
            {"parent": edge.parent, "child": edge.child, "relation": edge.relation}
            for edge in family.edges
        ],
        "truncated": getattr(family, "truncated", False),
    }


def _default(value: Any) -> Any:
    """Recorded parameters and scores may hold Decimals and datetimes: as strings, exact."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class JSON(JSONResponse):
    """JSONResponse that keeps Decimals exact and times ISO (see `_default`)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, default=_default, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
