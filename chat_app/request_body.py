"""A chat request's JSON body, with the tools' schemas encoded once per process.

The tools' schemas (about 18 KB of JSON for our tools) go with every model call, and
the SDK encoded them again each time: with its transform of the small parameters, a
few percent of an agent turn's CPU at 50 sessions. The schemas are built once
(tools/schemas) and LangChain hands the same list to every call, so its encoding is
kept and spliced into the body; the rest (the messages, which grow with the chat) is
encoded per call, as the SDK does: compact, UTF-8, no NaN.

What stays the SDK's: the request itself (`client.post`), its headers, auth, retries
and status errors. Keyword arguments that are request options, not body fields
(`extra_headers`, `extra_query`, `timeout`), become the request's options, and
`extra_body` is merged into the body, as `create` does.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

_OPTIONS = {"extra_headers": "headers", "extra_query": "params", "timeout": "timeout"}


class RequestBody:
    """Encodes request bodies; keeps the newest tools list's encoding."""

    def __init__(self) -> None:
        self._tools: Any = None  # the list last encoded (held: identity is the key)
        self._tools_json = ""

    def build(self, params: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """The JSON body and the request options for `chat.completions.create(**params)`."""
        import openai

        body: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for key, value in params.items():
            if value is openai.NOT_GIVEN or isinstance(value, openai.Omit):
                continue
            if key in _OPTIONS:
                if value is not None:
                    options[_OPTIONS[key]] = value
            elif key == "extra_body":
                body.update(value or {})
            else:
                body[key] = value
        tools = body.pop("tools", None)
        encoded = _dumps(body)
        if tools is not None:
            comma = "," if body else ""
            encoded = f'{encoded[:-1]}{comma}"tools":{self._encoded_tools(tools)}}}'
        return encoded.encode(), options

    def _encoded_tools(self, tools: Any) -> str:
        # By identity: the schemas are built once and never changed in place.
        if tools is not self._tools:
            self._tools, self._tools_json = tools, _dumps(tools)
        return self._tools_json


def _dumps(value: Any) -> str:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_plain
    )


def _plain(value: Any) -> Any:
    """What the SDK's encoder makes of the non-JSON values it accepts (a pydantic model,
    e.g. a response format; a datetime)."""
    import pydantic

    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(exclude_unset=True, mode="json", by_alias=True)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
