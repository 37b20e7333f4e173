"""Small preview pictures of work in progress, made from whatever a backend has so far.

A preview is shown in the chat while a job runs and replaced by the result, so it is made
small and cheap: at most `MAX_SIDE` pixels on its longer side, JPEG (a partial OpenAI
image is a full-size PNG of a megabyte or more; a few tens of kilobytes do for a
preview). Decoding and encoding cost a few milliseconds of CPU: callers on the event
loop run `from_bytes` in a worker thread (`asyncio.to_thread`).

A picture that cannot be read gives no preview (None) rather than an error: the result,
which is checked, is what counts, and a preview failing must never fail the job.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING

from core.logging_setup import get_logger
from pipelines.progress import Preview

if TYPE_CHECKING:
    from PIL.Image import Image

log = get_logger(__name__)

MAX_SIDE = 384
JPEG_QUALITY = 75


def from_image(image: Image, max_side: int = MAX_SIDE, *, in_place: bool = False) -> Preview:
    """A JPEG preview of a PIL image, shrunk to `max_side`; transparency over white.

    `in_place` shrinks `image` itself (one the caller opened for this), sparing a copy of
    the full-size picture. Bilinear after a box reduction: a preview needs no better.
    """
    from PIL import Image as PILImage

    picture = image if in_place else image.copy()
    picture.thumbnail((max_side, max_side), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
    if picture.mode in ("RGBA", "LA", "P"):
        rgba = picture.convert("RGBA")
        picture = PILImage.new("RGB", rgba.size, (255, 255, 255))
        picture.paste(rgba, mask=rgba.getchannel("A"))
    elif picture.mode != "RGB":
        picture = picture.convert("RGB")
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=JPEG_QUALITY)
    return Preview(out.getvalue(), "image/jpeg", picture.width, picture.height)


def from_bytes(data: bytes, max_side: int = MAX_SIDE) -> Preview | None:
    """A preview of an encoded image (PNG, JPEG, WebP); None if it does not decode."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale
            return from_image(opened, max_side, in_place=True)
    except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
        log.info("preview_unreadable", error=type(exc).__name__)
        return None


def from_base64(text: str, max_side: int = MAX_SIDE) -> Preview | None:
    """`from_bytes` of base64 text (OpenAI's partial images)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        log.info("preview_unreadable", error="base64")
        return None
    return from_bytes(data, max_side)


def data_uri(preview: Preview) -> str:
    """The preview inline, for a browser (`img-src data:` is allowed by the app's CSP)."""
    return f"data:{preview.mime};base64,{base64.b64encode(preview.data).decode('ascii')}"
