"""Reading `[[table]]` rows from a TOML data file so every mistake names file, line and why.

The price table and the model catalogue are both data files that operators extend with
their own; a bad row must stop start-up with a message they can act on. tomllib reports
no positions, so the line of each row is found from its `[[table]]` header.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from core.errors import ConfigError

# Builds the error for one row: fail("is missing source") -> ConfigError naming the row.
Fail = Callable[[str], ConfigError]


def read_tables(
    path: Path, kind: str, tables: Mapping[str, Any]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[int | None]]]:
    """(rows by table, header line of each row) of a file holding only `tables`.

    `kind` names the file in messages ("price file", "model catalogue"). Numbers are read
    as exact decimals.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the {kind} {path}: {exc.strerror}.") from None
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The {kind} {path} is not valid TOML: {exc}.") from None
    listed = " and ".join(f"[[{name}]]" for name in tables)
    for key, value in raw.items():
        if key not in tables:
            raise ConfigError(
                f"{kind[:1].upper()}{kind[1:]} {where(path, key_line(text, key))}: unknown "
                f"entry {key!r}; a {kind} holds {listed} rows."
            )
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(
                f"{kind[:1].upper()}{kind[1:]} {where(path, key_line(text, key))}: {key} must "
                f"be a list of [[{key}]] tables."
            )
    rows = {name: list(raw.get(name, [])) for name in tables}
    lines = {name: header_lines(text, name, len(rows[name])) for name in tables}
    return rows, lines


def header_lines(text: str, table: str, count: int) -> list[int | None]:
    """The line of each `[[table]]` header, in order.

    When the headers cannot be matched one to one with the rows (rows written as an
    inline array, or a header inside a multi-line string), rows are named without a line.
    """
    header = re.compile(rf"^\s*\[\[\s*{table}\s*\]\]\s*(#.*)?$")
    found = [i for i, line in enumerate(text.splitlines(), start=1) if header.match(line)]
    return list(found) if len(found) == count else [None] * count


def key_line(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*(\[\[?\s*{re.escape(key)}\s*\]|{re.escape(key)}\s*=)")
    return next(
        (i for i, line in enumerate(text.splitlines(), start=1) if pattern.match(line)), None
    )


def where(path: Path | None, line: int | None) -> str:
    return f"{path}, line {line}" if line is not None else f"{path}"


def check_fields(entry: Mapping[str, Any], known: set[str], fail: Fail) -> None:
    unknown = sorted(set(entry) - known)
    if unknown:
        raise fail(f"has unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def text(entry: Mapping[str, Any], name: str, fail: Fail) -> str:
    value = optional_text(entry, name, fail)
    if value is None:
        raise fail(f"is missing {name}")
    return value


def optional_text(entry: Mapping[str, Any], name: str, fail: Fail) -> str | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(f"has {name} = {value!r}; it must be a non-empty string")
    return value.strip()


def optional_day(entry: Mapping[str, Any], name: str, fail: Fail) -> dt.date | None:
    """A calendar day written YYYY-MM-DD (a TOML date or a string)."""
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise fail(f"has {name} = {value!r}; write a day as YYYY-MM-DD")
