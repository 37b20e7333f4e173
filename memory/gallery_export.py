"""A selection of the gallery as one zip: the files as stored, and a manifest of their records.

The files go in byte for byte as the media store holds them: a PNG keeps the parameters
embedded in it when it was recorded (memory/png_metadata.py), a clip comes as its MP4 and
its poster frame. `manifest.csv` has one row per item with every recorded field and every
parameter, nested ones under dotted names (`parameters.request.size`); its cells are
formula-safe (memory/csv_cells.py), since prompts and model names are anyone's text.

The zip is written to a temporary file, a file at a time as the media store streams it
(from disk or S3; images and clips are already compressed, so they are stored, not
deflated), so memory stays small whatever the selection weighs; the caller streams the
file and then removes it. A selection is capped (`MAX_ITEMS`); one that names anything
not the user's is refused as a whole, without saying which id it was (whether an id
exists is not the requester's to learn).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import InvalidInput, NotFound
from core.logging_setup import get_logger
from memory import csv_cells
from memory.ids import is_uuid
from memory.media_store import MediaStorage

if TYPE_CHECKING:
    from memory.gallery import Gallery, GalleryDetail

log = get_logger(__name__)

MAX_ITEMS = 500
MANIFEST = "manifest.csv"
_NOT_YOURS = "Some of the selected items are not in your gallery; nothing was downloaded."
_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
}
# The manifest's own columns, in order; the parameters follow, sorted by name.
COLUMNS = (
    "file",
    "poster_file",
    "id",
    "kind",
    "created_at",
    "prompt_typed",
    "prompt_sent",
    "backend",
    "model",
    "width",
    "height",
    "seconds",
    "seed",
    "cost_usd",
    "duration_ms",
    "kept",
    "style",
    "loras",
    "parent_id",
    "source_image_id",
    "thread_id",
    "thread_name",
    "mime",
    "media_key",
    "poster_key",
    "curations",
    "scores",
)


async def zip_items(
    gallery: Gallery, media: MediaStorage, user_id: str, ids: Sequence[str]
) -> Path:
    """A temporary zip of the user's items `ids` (in that order); the caller removes it.

    InvalidInput for an empty or too large selection; NotFound if any id is not the
    user's image or clip.
    """
    wanted = _checked_ids(ids)
    items = await gallery.items(user_id, wanted)
    if [item.id for item in items] != wanted:
        raise NotFound(_NOT_YOURS)
    details = [await gallery.detail(user_id, item_id) for item_id in wanted]
    path = await asyncio.to_thread(_write_zip, media, details)
    log.info("gallery_zip_made", items=len(details), bytes=path.stat().st_size)
    return path


def _checked_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidInput("Send the ids to download as a list.")
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        raise InvalidInput("Select at least one image or clip to download.")
    if len(wanted) > MAX_ITEMS:
        raise InvalidInput(
            f"At most {MAX_ITEMS} items can be downloaded at once; {len(wanted)} were "
            "selected. Download them in parts."
        )
    if not all(is_uuid(i) for i in wanted):
        raise NotFound(_NOT_YOURS)
    return list(dict.fromkeys(str(i).lower() for i in wanted))


# ------------------------------------------------------------------- the zip


def _write_zip(media: MediaStorage, details: list[GalleryDetail]) -> Path:
    fd, name = tempfile.mkstemp(prefix="atelier-gallery-", suffix=".zip")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            rows = [_add_files(archive, media, detail) for detail in details]
            with archive.open(_info(MANIFEST, zipfile.ZIP_DEFLATED), "w") as entry:
                text = io.TextIOWrapper(entry, encoding="utf-8", newline="")
                write_manifest(text, rows)
                text.flush()
                text.detach()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _add_files(
    archive: zipfile.ZipFile, media: MediaStorage, detail: GalleryDetail
) -> dict[str, Any]:
    """Put the item's file (and a clip's poster) in the zip; its manifest row."""
    item = detail.item
    row = _record(detail)
    stem = f"{item.id}"
    row["file"] = _add(archive, media, item.media_key, f"{stem}.{_extension(item.mime)}")
    if item.kind == "video" and item.thumb_key and item.thumb_key != item.media_key:
        row["poster_file"] = _add(archive, media, item.thumb_key, f"{stem}-poster.png")
    return row


def _add(archive: zipfile.ZipFile, media: MediaStorage, key: str, name: str) -> str:
    """The file under `name`, streamed from the store; "(missing)" if it is not there."""
    try:
        with media.open(key) as src, archive.open(_info(name, zipfile.ZIP_STORED), "w") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    except NotFound:
        log.warning("gallery_zip_file_missing", key=key[:12])
        return f"(missing from the media store: {name})"
    return name


def _info(name: str, compression: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now(UTC).timetuple()[:6])
    info.compress_type = compression
    info.external_attr = 0o644 << 16
    return info


def _extension(mime: str) -> str:
    return _EXTENSIONS.get(mime, "bin")


# -------------------------------------------------------------- the manifest


def _record(detail: GalleryDetail) -> dict[str, Any]:
    """Every recorded field of the item, as manifest cells (parameters come later)."""
    item = detail.item
    return {
        "file": "",
        "poster_file": "",
        "id": item.id,
        "kind": item.kind,
        "created_at": _cell(item.created_at),
        "prompt_typed": detail.prompt_typed,
        "prompt_sent": detail.prompt_sent,
        "backend": item.backend,
        "model": item.model,
        "width": item.width,
        "height": item.height,
        "seconds": item.seconds,
        "seed": detail.seed,
        "cost_usd": _cell(item.cost_usd),
        "duration_ms": detail.duration_ms,
        "kept": item.kept,
        "style": detail.style,
        "loras": "|".join(detail.loras),
        "parent_id": detail.parent_id,
        "source_image_id": detail.source_image_id,
        "thread_id": item.thread_id,
        "thread_name": detail.thread_name,
        "mime": item.mime,
        "media_key": item.media_key,
        "poster_key": item.thumb_key if item.kind == "video" else None,
        "curations": _cell(detail.curations) if detail.curations else None,
        "scores": _cell(detail.scores) if detail.scores else None,
        **{f"parameters.{k}": v for k, v in flatten(detail.parameters).items()},
    }


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists and other values as cells (lists as JSON)."""
    flat: dict[str, Any] = {}
    for key, inner in value.items():
        name = f"{prefix}{key}"
        if isinstance(inner, dict) and inner:
            flat.update(flatten(inner, name + "."))
        else:
            flat[name] = _cell(inner)
    return flat


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
    return value


def write_manifest(
    out: io.TextIOBase, rows: list[dict[str, Any]], columns: Sequence[str] = COLUMNS
) -> None:
    """A formula-safe CSV: `columns` first, then any other key a row has, sorted."""
    extra = sorted({key for row in rows for key in row} - set(columns))
    header = [*columns, *extra]
    writer = csv_cells.safe_writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if row.get(name) is None else row[name] for name in header])
