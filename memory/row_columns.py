"""A mapped class's columns for a Core select, each labelled with its attribute's name.

Rows of such a select read like the class's objects (`row.parameters`, `row.kept_at`),
so a record's `from_row` takes either. Reads made on every turn go through Core with
them: a session's identity map, object loading and transaction bookkeeping cost about
as much again as the query itself (memory/data_layer.py, `_thread_and_owner`).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import inspect


@functools.cache
def row_columns(model: type[Any]) -> tuple[Any, ...]:
    """Every mapped column of `model`, labelled `<attribute name>`, in mapping order."""
    return tuple(
        attribute.expression.label(key) for key, attribute in inspect(model).column_attrs.items()
    )
