"""Signed, expiring links to media, for places that cannot send the login cookie.

The signature is an HMAC of the key and expiry under the app's auth secret, so a link
cannot be forged or extended, and rotating the secret revokes every link.
"""

from __future__ import annotations

import hashlib
import hmac
import time


def _signature(secret: str, key: str, expires: int) -> str:
    message = f"{key}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def sign(secret: str, key: str, ttl_s: int = 7 * 24 * 3600, now: float | None = None) -> str:
    """Return the query string (`exp=…&sig=…`) that grants read access to `key`."""
    expires = int((now or time.time()) + ttl_s)
    return f"exp={expires}&sig={_signature(secret, key, expires)}"


def verify(secret: str, key: str, expires: str | None, sig: str | None) -> bool:
    if not expires or not sig or not expires.isdigit():
        return False
    if int(expires) < time.time():
        return False
    return hmac.compare_digest(_signature(secret, key, int(expires)), sig)
