"""Images the user attaches to a message become images of the conversation.

They are checked (readable, PNG/JPEG/WebP, not a decompression bomb, not over the size
limit) and recorded with backend "upload", so edit_image, fork and img2img can use
them by id like any generated image, and the lineage shows where they came from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from memory.errors import InvalidInput
from memory.images import ImageRecord, NewImage
from tools import image_jobs
from tools.context import ToolContext

MAX_UPLOAD_BYTES = 20 * 1024 * 1024


async def _read(element: Any) -> bytes:
    name = getattr(element, "name", None) or "the attachment"
    if getattr(element, "content", None):
        data = bytes(element.content)
    elif getattr(element, "path", None):
        path = Path(element.path)
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size > MAX_UPLOAD_BYTES:
            raise InvalidInput(f"{name} is {size / 2**20:.1f} MB; the limit is 20 MB.")
        data = await asyncio.to_thread(path.read_bytes)
    else:
        raise InvalidInput(f"{name} arrived without its file; attach it again.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InvalidInput(f"{name} is {len(data) / 2**20:.1f} MB; the limit is 20 MB.")
    return data


async def record_uploads(ctx: ToolContext, elements: list[Any], text: str) -> list[ImageRecord]:
    """Check every attachment first, then record them all: one bad file records none."""
    checked = []
    for element in elements:
        name = getattr(element, "name", None) or "the attachment"
        data = await _read(element)
        try:
            mime, width, height = await image_jobs.check_upload(data)
        except InvalidInput as exc:
            raise InvalidInput(f"{name}: {exc.message}") from None
        checked.append((name, data, mime, width, height))
    records = []
    for name, data, mime, width, height in checked:
        record, _ = await ctx.images.record(
            ctx.thread_id,
            ctx.user_id,
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
                message_id=ctx.message_id,
            ),
        )
        records.append(record)
    return records


def acknowledgement(records: list[ImageRecord]) -> str:
    listed = ", ".join(
        f"`{r.id[:8]}` ({r.width}×{r.height}, {r.parameters.get('filename')})" for r in records
    )
    return (
        f"Saved {len(records)} upload(s): {listed}. Say what to do with "
        f"{'it' if len(records) == 1 else 'them'}, e.g. *make it look like a watercolour*, "
        "or `/edit <instruction>`."
    )
