"""Parameters embedded in saved PNGs, so a file keeps its history outside the app.

Two text chunks: `parameters` in AUTOMATIC1111's layout (read by A1111, ComfyUI, Civitai,
InvokeAI and most image viewers for SD files) and `atelier` with the full JSON record.
"""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import PngImagePlugin

from core.errors import InvalidInput
from core.image_decoding import open_image


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


def embed(png: bytes, record: dict[str, Any]) -> bytes:
    """Return the PNG re-encoded losslessly with both text chunks added."""
    image = open_image(png)
    if image.format != "PNG":
        raise InvalidInput("Parameters can only be embedded into PNG files.")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(record))
    info.add_text("atelier", json.dumps(record, sort_keys=True, default=str))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def read_embedded(png: bytes) -> dict[str, str]:
    """The text chunks of a PNG (for tests and for importing files made elsewhere)."""
    image = open_image(png)
    return dict(getattr(image, "text", {}) or {})
