"""Secrets inside URLs, hidden before a URL (or a text that contains one) is shown or logged.

Operators put credentials into configured URLs (`http://user:pass@host/v1` for a proxy in
front of a model server, `postgresql+asyncpg://user:pass@db/atelier`), and URLs travel:
into error messages shown to every user, into log events, into the exception texts of
the HTTP clients, into `atelier doctor`. One function, used at each of those places,
keeps the user name (useful to the operator) and replaces the password, and the values
of query parameters whose names say they are secrets (`?api_key=`, `?token=`, a signed
link's `Signature=`).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ — the password runs to the last "@" of the authority, as
# urllib.parse reads it (an unescaped "@" inside a password is common in the wild).
_USERINFO = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^\s/?#@:]*:)(?P<password>[^\s/?#]*)@", re.IGNORECASE
)
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:[a-z0-9_\-]*(?:password|passwd|secret|token|api[_\-]?key|apikey|"
    r"signature|credential)[a-z0-9_\-]*|key|sig|pwd|auth)=)(?P<value>[^&;#\s\"'<>]+)",
    re.IGNORECASE,
)


def redact_urls(text: str) -> str:
    """`text` with every URL password and secret-looking query value replaced by ***.

    Works on a bare URL and on any text that embeds URLs (an exception message, a log
    line): `http://user:pass@host` becomes `http://user:***@host`.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['head']}{MASK}", text)
