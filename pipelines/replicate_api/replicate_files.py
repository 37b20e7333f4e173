"""What travels to and from Replicate besides the API calls: inline files, the record
of an input, and output links.

Outputs are links a model (that is, a provider) chose, so any that is not a data: URI is
fetched through the guarded downloader only (pipelines/downloads/guarded_fetch.py), never with the
API token; a data: URI is decoded in place.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import urllib.parse
from typing import Any

from core.errors import BackendFailed, InvalidInput
from pipelines.downloads.guarded_fetch import GuardedFetcher

# --------------------------------------------------------------------------- inputs


def data_uri(data: bytes, mime: str) -> str:
    """A file sent inline (fine up to ~1 MB, Replicate's advice: no upload round trip)."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def check_json(inputs: dict[str, Any]) -> None:
    try:
        json.dumps(inputs)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Extra inputs must be plain JSON values ({exc}).") from None


def redact(value: Any) -> Any:
    """The input as sent, with data URIs shortened to their kind and size for the record
    ("<image 12 KB>", "<zip 800 KB>")."""
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, str) and value.startswith("data:"):
        header, _, payload = value.partition(",")
        kind, _, subtype = header[5:].split(";")[0].partition("/")
        name = subtype if kind == "application" else kind or "file"
        return f"<{name} {math.ceil(len(payload) * 3 / 4 / 1024)} KB>"
    return value


def record(prediction: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """What a result keeps of its prediction: the input as sent (redacted) and which
    prediction, model and version made it, so it can be looked up and made again."""
    return {
        "input": redact(inputs),
        "prediction_id": prediction.id,
        "replicate_model": prediction.model,
        "version": prediction.version,
    }


# --------------------------------------------------------------------------- outputs


def output_link(item: Any, label: str, what: str) -> str:
    """One output item (a FileOutput or a plain string) as its link; which links are
    fetched is `fetch_output`'s call (data: decoded, anything else through the guard).

    Anything else is refused here, naming the model: a value of another type, or text
    that is no URL at all. A URL of a scheme or host Atelier does not fetch is the guard's
    to refuse, with its neutral message."""
    from replicate.helpers import FileOutput  # on first use: `replicate` costs start-up time

    url = item.url if isinstance(item, FileOutput) else item
    if not isinstance(url, str):
        kind = {dict: "an object", list: "a list", bool: "true/false"}.get(type(url))
        found = kind or ("a number" if isinstance(url, int | float) else type(url).__name__)
        raise BackendFailed(_unusable(label, what, found))
    if not url.startswith("data:") and not _has_scheme(url):
        raise BackendFailed(_unusable(label, what, "text that is not a URL"))
    return url


def _has_scheme(text: str) -> bool:
    try:
        return bool(urllib.parse.urlsplit(text.strip()).scheme)
    except ValueError:  # e.g. an unclosed [IPv6] host
        return False


def _unusable(label: str, what: str, found: str) -> str:
    return (
        f"{label} finished, but its output is not {what} link (it is {found}), so nothing "
        "was kept. This model's answers may not be something Atelier can use: try again, "
        "and if it keeps happening, try another model."
    )


async def fetch_output(files: GuardedFetcher, url: str, label: str, *, max_bytes: int) -> bytes:
    """A data: URI decoded in place; any other link through the guarded downloader."""
    if url.startswith("data:"):
        return _decode_data_uri(url, label)
    return await files.fetch(url, max_bytes=max_bytes)


def _decode_data_uri(uri: str, label: str) -> bytes:
    header, sep, payload = uri.partition(",")
    try:
        if not sep:
            raise ValueError("no comma")
        if header.endswith(";base64"):
            return base64.b64decode(payload, validate=True)
        return urllib.parse.unquote_to_bytes(payload)
    except (ValueError, binascii.Error):
        raise BackendFailed(f"{label} returned a data: URI that cannot be decoded.") from None
