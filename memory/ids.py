"""Validation of ids that arrive from clients, models or URLs.

Every id is checked before it reaches a query, so a crafted value is refused with a
clear error rather than reaching SQL (even as a bound parameter) or the file system.
"""

from __future__ import annotations

import re
import uuid

from core.errors import InvalidInput, NotFound

_MEDIA_KEY = re.compile(r"^[0-9a-f]{64}$")


def require_uuid(value: object, what: str = "id") -> str:
    """Return the canonical lowercase form of a UUID, or raise InvalidInput."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"Invalid {what}: expected a UUID.")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidInput(f"Invalid {what}: expected a UUID.") from None


def is_uuid(value: object) -> bool:
    try:
        require_uuid(value)
    except InvalidInput:
        return False
    return True


def require_media_key(value: object) -> str:
    """Media keys are SHA-256 hex digests; anything else is treated as not found."""
    if not isinstance(value, str) or not _MEDIA_KEY.match(value):
        raise NotFound("No such file.")
    return value
