"""Parameters embedded in saved PNGs, so a file keeps its history outside the app.

Two text chunks: `parameters` in AUTOMATIC1111's layout (read by A1111, ComfyUI, Civitai,
InvokeAI and most image viewers for SD files) and `atelier` with the full JSON record.

The chunks are spliced into the file, not written by decoding and re-encoding the image:
that cost about 50 ms of CPU per 1024x1024 image, more than the rest of an image turn.
The file's structure is still checked (every chunk's CRC, the header, the pixel limit),
and what a re-encode used to drop is still dropped: any other text, EXIF and timestamps
(an upload's GPS position, say), keeping only what draws the image.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from core.errors import InvalidInput
from core.image_decoding import MAX_PIXELS, open_image


def a1111_parameters(record: dict[str, Any]) -> str:
    """Format a generation record in A1111's `parameters` text layout."""
    lines = [record.get("prompt_sent") or record.get("prompt_typed") or ""]
    params = record.get("parameters") or {}
    if negative := params.get("negative_prompt"):
        lines.append(f"Negative prompt: {negative}")
    fields = []
    if "steps" in params:
        fields.append(f"Steps: {params['steps']}")
    if "sampler" in params:
        fields.append(f"Sampler: {params['sampler']}")
    if "guidance" in params:
        fields.append(f"CFG scale: {params['guidance']}")
    seed = record.get("seed")
    fields.append(f"Seed: {seed if seed is not None else 'none'}")
    fields.append(f"Size: {record.get('width')}x{record.get('height')}")
    fields.append(f"Model: {record.get('model')}")
    fields.append(f"Backend: {record.get('backend')}")
    if quality := params.get("quality"):
        fields.append(f"Quality: {quality}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks kept from the source: those that decide how the image looks.
_KEPT = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT"}
    | {b"pHYs", b"bKGD"}
)
_UNREADABLE = "That file is not an image that can be read."


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(keyword: str, text: str) -> bytes:
    """tEXt where Latin-1 holds the text (as Pillow writes it), else UTF-8 iTXt."""
    try:
        return _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, compression flag and method, empty language tag and translated keyword
        header = keyword.encode("latin-1") + b"\0\0\0\0\0"
        return _chunk(b"iTXt", header + text.encode("utf-8"))


def _chunks(png: bytes) -> list[tuple[bytes, memoryview]]:
    """(type, whole chunk) of a structurally sound PNG, or InvalidInput.

    The chunks are views into `png`, not copies: the image data of a 1024x1024 picture
    is megabytes, and `embed` copies it once, into the file it returns."""
    if not png.startswith(_SIGNATURE):
        raise InvalidInput("Parameters can only be embedded into PNG files.")
    view = memoryview(png)
    found: list[tuple[bytes, memoryview]] = []
    at = len(_SIGNATURE)
    while at < len(png):
        if at + 12 > len(png):
            raise InvalidInput(_UNREADABLE)
        (length,) = struct.unpack_from(">I", png, at)
        end = at + 12 + length
        kind = png[at + 4 : at + 8]
        # The CRC covers the type and the data, which lie side by side in the file.
        if (
            end > len(png)
            or zlib.crc32(view[at + 4 : end - 4]) != struct.unpack_from(">I", png, end - 4)[0]
        ):
            raise InvalidInput(_UNREADABLE)
        found.append((kind, view[at:end]))
        at = end
        if kind == b"IEND":
            break
    kinds = [kind for kind, _ in found]
    if not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND" or b"IDAT" not in kinds:
        raise InvalidInput(_UNREADABLE)
    width, height = struct.unpack_from(">II", found[0][1], 8)
    if not width or not height:
        raise InvalidInput(_UNREADABLE)
    if width * height > MAX_PIXELS:
        raise InvalidInput(
            f"Image is too large ({width}x{height}); the limit is {MAX_PIXELS:,} pixels."
        )
    return found


def embed(png: bytes, record: dict[str, Any]) -> bytes:
    """The PNG with both text chunks added (before its image data) and nothing else new."""
    texts = _text_chunk("parameters", a1111_parameters(record)) + _text_chunk(
        "atelier", json.dumps(record, sort_keys=True, default=str)
    )
    out: list[bytes | memoryview] = [_SIGNATURE]
    for kind, whole in _chunks(png):
        if kind == b"IDAT" and texts:
            out.append(texts)
            texts = b""
        if kind in _KEPT:
            out.append(whole)
    return b"".join(out)


def read_embedded(png: bytes) -> dict[str, str]:
    """The text chunks of a PNG (for tests and for importing files made elsewhere)."""
    image = open_image(png)
    return dict(getattr(image, "text", {}) or {})
