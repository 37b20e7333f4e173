"""A batch as one zip: its final images as stored, and a manifest of every attempt.

A batch of 120 objects is meant to leave the app (a book's illustrations, a catalogue), so
the download must say how each picture was made and why others were not kept: the
manifest has one row per item and attempt (an item never tried has one row with no
attempt), with its prompt, seed, cost, quality verdict and each check's score. The zip
and its cells are written by memory/gallery_export.py's helpers (files streamed from
the media store, formula-safe cells), so the two downloads cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import NotFound
from core.logging_setup import get_logger
from memory.gallery_export import MANIFEST, _add, _cell, _extension, _info, write_manifest
from memory.images import ImageRecord, ImageStore
from memory.media_store import MediaStorage

if TYPE_CHECKING:
    from memory.batches import BatchItemRecord, BatchStore

log = get_logger(__name__)

# The manifest's columns in order; each check's score follows as `check.NAME`.
COLUMNS = (
    "position",
    "label",
    "status",
    "attempt",
    "outcome",
    "seed",
    "prompt_sent",
    "template",
    "style",
    "size",
    "image_id",
    "file",
    "cost_usd",
    "qc_passed",
    "qc_score",
    "reason",
    "error",
)


async def zip_batch(
    store: BatchStore, media: MediaStorage, images: ImageStore, batch_id: str, user_id: str
) -> Path:
    """A temporary zip of the user's batch (NotFound for anyone else's); the caller
    streams it and removes it."""
    items = await store.items(batch_id, user_id)
    finals: list[tuple[BatchItemRecord, list[ImageRecord]]] = []
    for item in items:
        records = []
        for image_id in item.image_ids:
            # Deleted since (the gallery's Delete): the manifest keeps its id, no file.
            with contextlib.suppress(NotFound):
                records.append(await images.get(image_id, user_id))
        finals.append((item, records))
    path = await asyncio.to_thread(_write_zip, media, finals)
    log.info("batch_zip_made", items=len(items), bytes=path.stat().st_size)
    return path


def _write_zip(
    media: MediaStorage, finals: list[tuple[BatchItemRecord, list[ImageRecord]]]
) -> Path:
    fd, name = tempfile.mkstemp(prefix="atelier-batch-", suffix=".zip")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as archive:
            rows: list[dict[str, Any]] = []
            for item, records in finals:
                files = {
                    record.id: _add(archive, media, record.media_key, _file_name(item, n, record))
                    for n, record in enumerate(records, start=1)
                }
                rows.extend(manifest_rows(item, files))
            with archive.open(_info(MANIFEST, zipfile.ZIP_DEFLATED), "w") as entry:
                text = io.TextIOWrapper(entry, encoding="utf-8", newline="")
                write_manifest(text, rows, COLUMNS)
                text.flush()
                text.detach()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _file_name(item: BatchItemRecord, n: int, record: ImageRecord) -> str:
    """ "0007-red-apple.png" (a second image of the item: "0007-red-apple-2.png")."""
    slug = re.sub(r"[^a-z0-9]+", "-", item.label.lower()).strip("-")[:60] or "item"
    suffix = f"-{n}" if n > 1 else ""
    return f"{item.position + 1:04d}-{slug}{suffix}.{_extension(record.mime)}"


def manifest_rows(item: BatchItemRecord, files: dict[str, str]) -> list[dict[str, Any]]:
    """The item's rows: one per attempt (one without an attempt if it never ran).

    `files` maps the final images' ids to their names in the zip.
    """
    base = {
        "position": item.position,
        "label": item.label,
        "status": item.status,
        "prompt_sent": item.prompt_sent,
        "template": item.template,
        "style": item.style,
        "size": item.size,
    }
    if not item.attempts:
        return [{**base, "seed": item.seed, "cost_usd": _cell(item.cost_usd), "error": item.error}]
    rows = []
    last = len(item.attempts)
    for attempt in item.attempts:
        ids = list(attempt.get("image_ids") or [])
        rows.append(
            {
                **base,
                "attempt": attempt.get("n"),
                "outcome": attempt.get("outcome"),
                "seed": attempt.get("seed"),
                "image_id": " ".join(ids),
                "file": " ".join(files[i] for i in ids if i in files),
                "cost_usd": attempt.get("cost_usd"),
                "qc_passed": attempt.get("qc_passed"),
                "qc_score": attempt.get("score"),
                "reason": attempt.get("reason"),
                "error": item.error if attempt.get("n") == last else None,
                **{f"check.{k}": v for k, v in (attempt.get("scores") or {}).items()},
            }
        )
    return rows
