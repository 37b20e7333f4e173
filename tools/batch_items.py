"""The items of a batch, read from a typed list or an attached .txt/.csv file.

Pure parsing, no I/O: the chat tool hands text or bytes in and gets `ItemSpec` rows back,
or an InvalidInput naming the row and column to fix, so a bad row is found before the
estimate rather than halfway through a paid batch. Style and template names are kept as
written (the caller checks them against its libraries). Cells that look like spreadsheet
formulas are plain text here; the zip's manifest escapes them on the way out.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import PurePath

from core.errors import InvalidInput

MAX_ITEMS = 1000
MAX_LABEL_CHARS = 300
MAX_COUNT = 10
MAX_SEED = 2**32 - 1

LABEL_COLUMNS = ("object", "item", "label", "prompt")
OPTION_COLUMNS = ("style", "size", "count", "seed", "template")

_BULLET = re.compile(r"^(?:[-*•–]\s*|\d{1,4}[.)]\s+)")
_SIZE = re.compile(r"^(\d{1,5})\s*[x×]\s*(\d{1,5})$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ItemSpec:
    label: str
    style: str | None = None
    size: str | None = None
    count: int = 1
    seed: int | None = None
    template: str | None = None


def parse_list(text: str, *, max_items: int = MAX_ITEMS) -> list[ItemSpec]:
    """One item per line; a single line splits on commas or semicolons. Bullets ("-",
    "*", "1.", "1)") are dropped, blank lines skipped; duplicates stay (two are wanted)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) == 1 and re.search(r"[,;]", lines[0]):
        lines = [part.strip() for part in re.split(r"[,;]", lines[0]) if part.strip()]
    items: list[ItemSpec] = []
    for number, line in enumerate(lines, start=1):
        label = _label(_BULLET.sub("", line), f"Item {number}")
        if label:
            items.append(ItemSpec(label=label))
    return _checked(items, max_items)


def parse_file(name: str, data: bytes, *, max_items: int = MAX_ITEMS) -> list[ItemSpec]:
    """Items from an attached `.txt` (as parse_list) or `.csv` (one item per row; a header
    row naming the columns when there is more than one)."""
    suffix = PurePath(name or "").suffix.lower()
    if suffix not in (".txt", ".csv"):
        raise InvalidInput(
            f"{name!r} is not a list I can read: attach a .txt (one object per line) "
            "or a .csv (a column named object, and optionally style, size, count, seed, "
            "template)."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInput(
            f"{name} is not UTF-8 text: save it as UTF-8 and attach it again."
        ) from None
    if suffix == ".txt":
        return parse_list(text, max_items=max_items)
    return _parse_csv(name, text, max_items)


def _parse_csv(name: str, text: str, max_items: int) -> list[ItemSpec]:
    try:
        rows = list(csv.reader(io.StringIO(text), delimiter=_delimiter(text)))
    except csv.Error as exc:
        raise InvalidInput(f"{name} is not a readable CSV file: {exc}.") from None
    numbered = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise InvalidInput(f"{name} has no items: put one object per row.")
    first_number, first = numbered[0]
    columns = [_column_name(cell) for cell in first]
    if len(columns) == 1 and columns[0] not in LABEL_COLUMNS:
        columns = ["object"]  # one column without a header: every row is an object
    else:
        numbered = numbered[1:]
        _check_header(name, first_number, first, columns)
    label_column = next(c for c in columns if c in LABEL_COLUMNS)
    items: list[ItemSpec] = []
    for number, row in numbered:
        if len(items) >= max_items:
            raise _too_many(len(numbered), max_items)
        if len(row) > len(columns) and any(c.strip() for c in row[len(columns) :]):
            raise InvalidInput(
                f"{name}, row {number}: {len(row)} cells, but the header names "
                f"{len(columns)} columns ({', '.join(first)})."
            )
        cells = dict(zip(columns, row, strict=False))
        items.append(_row(f"{name}, row {number}", label_column, cells))
    return _checked(items, max_items)


def _delimiter(text: str) -> str:
    """Comma unless the header row clearly uses semicolons or tabs (spreadsheets in some
    locales save CSV with ';')."""
    header = text.split("\n", 1)[0]
    for other in (";", "\t"):
        if other in header and "," not in header:
            return other
    return ","


def _column_name(cell: str) -> str:
    return re.sub(r"[\s_-]+", "_", cell.strip().lower())


def _check_header(name: str, number: int, raw: list[str], columns: list[str]) -> None:
    labels = [c for c in columns if c in LABEL_COLUMNS]
    known = f"{' / '.join(LABEL_COLUMNS)} (one of them), {', '.join(OPTION_COLUMNS)}"
    if not labels:
        raise InvalidInput(
            f"{name}: row {number} must name the columns, with one called object "
            f"(or item, label, prompt); found {', '.join(repr(c) for c in raw)}. "
            f"Columns I read: {known}."
        )
    if len(labels) > 1:
        raise InvalidInput(
            f"{name}: the header has {len(labels)} object columns ({', '.join(labels)}); keep one."
        )
    for column in columns:
        if column not in LABEL_COLUMNS and column not in OPTION_COLUMNS:
            raise InvalidInput(f"{name}: column {column!r} is not one I read. Columns: {known}.")
        if columns.count(column) > 1:
            raise InvalidInput(f"{name}: column {column!r} appears twice in the header.")


def _row(where: str, label_column: str, cells: dict[str, str]) -> ItemSpec:
    label = _label(cells.get(label_column, ""), f"{where}, column {label_column}")
    if not label:
        raise InvalidInput(f"{where}, column {label_column}: the object is empty.")
    return ItemSpec(
        label=label,
        style=_text(cells.get("style")),
        size=_size(cells.get("size"), where),
        count=_whole(cells.get("count"), where, "count", 1, MAX_COUNT) or 1,
        seed=_whole(cells.get("seed"), where, "seed", 0, MAX_SEED),
        template=_text(cells.get("template")),
    )


def _label(raw: str, where: str) -> str:
    label = " ".join(_CONTROL.sub(" ", raw).split())
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidInput(
            f"{where} is {len(label)} characters long; an item is at most "
            f"{MAX_LABEL_CHARS} characters."
        )
    return label


def _text(raw: str | None) -> str | None:
    return (raw or "").strip() or None


def _size(raw: str | None, where: str) -> str | None:
    text = (raw or "").strip().lower()
    if not text:
        return None
    match = _SIZE.match(text)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise InvalidInput(
            f"{where}, column size: {text!r} is not a size; write WIDTHxHEIGHT "
            "in pixels, e.g. 1024x1024."
        )
    return f"{int(match[1])}x{int(match[2])}"


def _whole(raw: str | None, where: str, column: str, low: int, high: int) -> int | None:
    text = (raw or "").strip()
    if not text:
        return None
    limits = f"from {low} to {high}" + (" (2**32-1)" if high == MAX_SEED else "")
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise InvalidInput(f"{where}, column {column}: {text!r} is not a whole number {limits}.")
    return int(text)


def _checked(items: list[ItemSpec], max_items: int) -> list[ItemSpec]:
    if not items:
        raise InvalidInput(
            "The list has no items: write one object per line, or separate them with commas."
        )
    if len(items) > max_items:
        raise _too_many(len(items), max_items)
    return items


def _too_many(found: int, max_items: int) -> InvalidInput:
    return InvalidInput(
        f"The list has {found} items; a batch takes at most {max_items}. "
        "Split it into smaller batches."
    )
