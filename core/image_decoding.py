"""Decoding untrusted image bytes safely: uploads, provider answers, stored files alike.

Every layer decodes images (the chat's uploads, the backends' downloads, the scorers'
inputs), and each must refuse a non-image or a decompression bomb the same way, so the
one decoder lives where every layer may import it.
"""

from __future__ import annotations

import io

from PIL import Image

from core.errors import InvalidInput

# 64 megapixels: above any model's output, far below a decompression bomb.
MAX_PIXELS = 64_000_000


def open_image(data: bytes) -> Image.Image:
    """Decode bytes into an image, refusing non-images and decompression bombs."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_PIXELS:
                raise InvalidInput(
                    f"Image is too large ({width}x{height}); the limit is {MAX_PIXELS:,} pixels."
                )
            probe.verify()
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except InvalidInput:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidInput("That file is not an image that can be read.") from None
