"""Pictures of work in progress, made from whatever a backend has so far.

A preview is shown in the chat while a job runs and replaced by the result. A picture
that comes as base64 text a browser can show (PNG, JPEG, WebP, up to `FORWARD_MAX_BYTES`:
OpenAI's partial images) is passed on as it came (`forwarded`): only its first bytes are
decoded, to learn its type and size, and the browser scales it. Decoding a 1024x1024
PNG to shrink it cost 15-25 ms of CPU per partial image, a third of an image turn's;
passing it on costs a string copy. Anything else (a larger picture, an output fetched
from Replicate, a decoded latent) is made small here: at most `MAX_SIDE` pixels on its
longer side, JPEG. That costs milliseconds of CPU: callers on the event loop run
`from_bytes` and `from_base64` in a worker thread (`asyncio.to_thread`).

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
# A larger picture is shrunk rather than passed on: a 1024x1024 partial image is 1-2 MB
# as PNG, about what the browser then fetches for the result; 8 megapixels are not.
FORWARD_MAX_BYTES = 3 * 1024 * 1024
# How much base64 is decoded to read a picture's header (a multiple of 4): PNG's size is
# in its first 24 bytes; a JPEG's comes after its metadata, which partial images keep short.
_HEADER_CHARS = 16 * 1024
_BROWSER_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class _Forwarded(Preview):
    """A preview that is base64 text as it came: `data_uri` puts the text itself into the
    page, and the bytes are decoded only if something else asks for them."""

    def __init__(self, text: str, mime: str, width: int, height: int) -> None:
        # Preview is frozen; its `data` is this class's property.
        for name, value in (("text", text), ("mime", mime), ("width", width), ("height", height)):
            object.__setattr__(self, name, value)

    @property
    def data(self) -> bytes:  # type: ignore[override]
        return base64.b64decode(self.text)

    def __repr__(self) -> str:
        return f"_Forwarded({self.mime}, {self.width}x{self.height}, {len(self.text)} chars)"


def forwarded(text: str) -> Preview | None:
    """The base64 picture itself as the preview, if a browser can show it as it is; None
    if it cannot (another type, too large, a header that does not read), for `from_base64`
    to try. Cheap enough for the event loop: only the header is decoded."""
    from PIL import Image as PILImage

    if len(text) > FORWARD_MAX_BYTES * 4 // 3:
        return None
    try:
        head = base64.b64decode(text[:_HEADER_CHARS], validate=True)
        with PILImage.open(io.BytesIO(head)) as opened:  # reads the header only
            mime = _BROWSER_TYPES.get(opened.format or "")
            width, height = opened.size
    except (OSError, ValueError, SyntaxError, binascii.Error, PILImage.DecompressionBombError):
        return None
    if mime is None:
        return None
    return _Forwarded(text, mime, width, height)


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
    """A small JPEG preview of an encoded image (PNG, JPEG, WebP); None if it does not
    decode."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a smaller scale
            return from_image(opened, max_side, in_place=True)
    except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
        log.info("preview_unreadable", error=type(exc).__name__)
        return None


def from_base64(text: str, max_side: int = MAX_SIDE) -> Preview | None:
    """`from_bytes` of base64 text (a partial image that `forwarded` would not pass on)."""
    try:
        data = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        log.info("preview_unreadable", error="base64")
        return None
    return from_bytes(data, max_side)


def data_uri(preview: Preview) -> str:
    """The preview inline, for a browser (`img-src data:` is allowed by the app's CSP)."""
    text = preview.text if isinstance(preview, _Forwarded) else None
    if text is None:
        text = base64.b64encode(preview.data).decode("ascii")
    return f"data:{preview.mime};base64,{text}"
