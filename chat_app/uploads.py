"""Images the user attaches to a message become images of the conversation.

They are checked (readable, PNG/JPEG/WebP, not a decompression bomb, not over the size
limit) and recorded with backend "upload", so edit_image, fork and img2img can use
them by id like any generated image, and the lineage shows where they came from.

A zip is a training set: it is not recorded as an image but handed to the turn, so
a training started in the same message (`/train NAME` or "learn this subject") uses
it; lora_dataset checks what is inside.

A .txt or .csv is a list of objects for a batch: handed to the turn as well, so
`/batch` (or "a crayon drawing of each of these") in the same message makes one image
per row; tools/batch_items.py reads and checks it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.errors import InvalidInput
from memory.images import ImageRecord, NewImage
from pipelines.training.lora_dataset import DatasetLimits
from tools import image_jobs
from tools.context import ToolContext

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_ZIP_BYTES = DatasetLimits().max_upload_bytes
ZIP_MIMES = ("application/zip", "application/x-zip-compressed")
MAX_LIST_BYTES = 1024 * 1024
LIST_SUFFIXES = (".txt", ".csv")
LIST_MIMES = ("text/plain", "text/csv", "application/csv")


def is_zip(element: Any) -> bool:
    name = (getattr(element, "name", None) or "").lower()
    return name.endswith(".zip") or getattr(element, "mime", None) in ZIP_MIMES


def is_list(element: Any) -> bool:
    """A .txt/.csv attachment: the objects of a batch, not an image."""
    name = (getattr(element, "name", None) or "").lower()
    return name.endswith(LIST_SUFFIXES) or getattr(element, "mime", None) in LIST_MIMES


async def _read(element: Any, limit: int = MAX_UPLOAD_BYTES) -> bytes:
    name = getattr(element, "name", None) or "the attachment"
    too_big = f"the limit is {limit // 2**20} MB"
    if getattr(element, "content", None):
        data = bytes(element.content)
    elif getattr(element, "path", None):
        path = Path(element.path)
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > limit:
            raise InvalidInput(f"{name} is {size / 2**20:.1f} MB; {too_big}.")
        data = await asyncio.to_thread(path.read_bytes)
    else:
        raise InvalidInput(f"{name} arrived without its file; attach it again.")
    if len(data) > limit:
        raise InvalidInput(f"{name} is {len(data) / 2**20:.1f} MB; {too_big}.")
    return data


async def read_zips(elements: list[Any]) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the attached zips, for a training in this message."""
    return [
        (getattr(element, "name", None) or "upload.zip", await _read(element, MAX_ZIP_BYTES))
        for element in elements
        if is_zip(element)
    ]


async def read_lists(elements: list[Any]) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the attached .txt/.csv lists, for a batch in this message."""
    return [
        (getattr(element, "name", None) or "list.txt", await _read(element, MAX_LIST_BYTES))
        for element in elements
        if is_list(element) and not is_zip(element)
    ]


async def record_uploads(ctx: ToolContext, elements: list[Any], text: str) -> list[ImageRecord]:
    """Check every attached image first, then record them all: one bad file records none."""
    checked = []
    for element in elements:
        if is_zip(element) or is_list(element):
            continue
        name = getattr(element, "name", None) or "the attachment"
        data = await _read(element)
        try:
            mime, width, height = await image_jobs.check_upload(data)
        except InvalidInput as exc:
            raise InvalidInput(f"{name}: {exc.message}") from None
        checked.append((name, data, mime, width, height))
    records = []
    for name, data, mime, width, height in checked:
        record, _ = await ctx.services.images.record(
            ctx.turn.thread_id,
            ctx.turn.user_id,
            NewImage(
                data=data,
                mime=mime,
                width=width,
                height=height,
                prompt_typed=text,
                prompt_sent="",
                backend="upload",
                model="",
                parameters={"filename": name[:255], "source": "uploaded by the user"},
                message_id=ctx.turn.message_id,
            ),
        )
        records.append(record)
    return records


def acknowledgement(records: list[ImageRecord], zips: list[tuple[str, bytes]] = ()) -> str:
    if zips and not records:
        names = ", ".join(name for name, _ in zips)
        return (
            f"Received {names} as a training set. It is used by a training started in "
            "this same message: attach it to `/train NAME --trigger TOK` (or say *learn "
            "this subject as NAME*)."
        )
    listed = ", ".join(
        f"`{r.id[:8]}` ({r.width}×{r.height}, {r.parameters.get('filename')})" for r in records
    )
    return (
        f"Saved {len(records)} upload(s): {listed}. Say what to do with "
        f"{'it' if len(records) == 1 else 'them'}, e.g. *make it look like a watercolour*, "
        "or `/edit <instruction>`."
    )


def list_acknowledgement(files: list[tuple[str, bytes]]) -> str:
    """A list arrived without /batch: how to make one image per row of it."""
    names = ", ".join(name for name, _ in files)
    return (
        f"Received {names} as a list. To make one image of each row, attach it to a "
        "`/batch` message, e.g. `/batch --style crayon`. A .txt takes one object per "
        "line; a .csv names its columns in a header row: object (or item, label, "
        "prompt), and optionally style, size, count, seed and template per row."
    )
