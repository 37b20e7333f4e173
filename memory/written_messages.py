"""Messages written into a conversation from outside the chat, as the chat writes them.

The gallery's "use in a new conversation" and the HTTP API's per-token conversations add
steps without a Chainlit session. Written here in one shape, they read back exactly like
the chat's own: ordered by the data layer's time-based version, and with image elements
named "<image id>.<ext>", by which the chat puts the image's buttons on them on resume.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from memory.images import ImageRecord
from memory.models import Element, Step, new_id, utcnow

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def message_step(
    step_id: str, thread_id: str, name: str, kind: str, text: str, *, is_error: bool = False
) -> Step:
    """A finished message step (`kind`: user_message or assistant_message)."""
    version = time.time_ns()  # the data layer's write order: time based, increasing
    stamp = utcnow().replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    return Step(
        id=step_id,
        thread_id=thread_id,
        parent_id=None,
        name=name[:255],
        type=kind,
        input="",
        output=text,
        meta={},
        is_error=is_error,
        streaming=False,
        created_at=stamp,
        start_at=stamp,
        end_at=stamp,
        position=version,
        write_version=version,
    )


def image_elements(thread_id: str, step_id: str, images: Sequence[ImageRecord]) -> list[Element]:
    """The images shown under a step, large and inline."""
    now = utcnow()
    return [
        Element(
            id=new_id(),
            thread_id=thread_id,
            for_id=step_id,
            type="image",
            name=f"{image.id}.{_EXTENSIONS.get(image.mime, 'png')}",
            display="inline",
            size="large",
            mime=image.mime,
            media_key=image.media_key,
            created_at=now,
        )
        for image in images
    ]
