"""The gallery's filter columns, read out of an image's recorded parameters.

`images.parameters` holds everything about how an image was made, but a filter on a JSON
path cannot use an index on either database and reads every row's JSON; so the two that
the gallery filters on are copied into plain columns when the image is recorded:

- `style`: the style it was refined in (`parameters["lineage"]["style"]`).
- `lora_names`: the LoRAs it used, lower-case, as `"|name1|name2|"`, so that
  `LIKE '%|name|%'` matches one whole name and never a part of a longer one. Read from
  the replayable request (`parameters["request"]["loras"]`: `[[name, weight], ...]`), or
  from what the local backend reports (`parameters["loras"]`: `[{"name", "weight"}]`).

Migration 0013 fills the columns for older images with a copy of these rules (a
migration must not change when this module does).
"""

from __future__ import annotations

from typing import Any

STYLE_MAX = 64  # images.style
LORA_NAMES_MAX = 512  # images.lora_names


def style_of(parameters: dict[str, Any] | None) -> str | None:
    lineage = (parameters or {}).get("lineage")
    style = lineage.get("style") if isinstance(lineage, dict) else None
    if not isinstance(style, str) or not style.strip():
        return None
    return style.strip()[:STYLE_MAX]


def lora_names_of(parameters: dict[str, Any] | None) -> str | None:
    """`"|a|b|"` for the LoRAs in `parameters`, or None when it used none."""
    parameters = parameters or {}
    request = parameters.get("request")
    entries = request.get("loras") if isinstance(request, dict) else None
    if not entries:
        entries = parameters.get("loras")
    names: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            entry = entry.get("name")
        elif isinstance(entry, list | tuple) and entry:
            entry = entry[0]
        if isinstance(entry, str):
            name = entry.strip().lower().replace("|", "")
            if name and name not in names:
                names.append(name)
    joined = "|"
    for name in names:
        if len(joined) + len(name) + 1 > LORA_NAMES_MAX:
            break  # the column's width; a name cut in half would match wrongly
        joined += name + "|"
    return joined if joined != "|" else None


def lora_list(lora_names: str | None) -> list[str]:
    """The names in a `lora_names` column value, in order."""
    return [name for name in (lora_names or "").split("|") if name]
