"""Shared by tests that run tools in-process: the chat's side of a tool call, the price
file for the seeded test backend, and the ledger read back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from memory.models import LedgerEntry

# The seeded test backend (tests/test_tools.py) priced like a per-image hosted model.
SEEDED_PRICE_FILE = """
[[price]]
backend = "seeded"
model = "toy-v1"
unit = "image"
amount_usd = 0.10
source = "test"
date = "2026-11-22"
"""


class ChatRecorder:
    """The chat's side: what was announced, what was asked, and the answer to give."""

    def __init__(self, answer: bool = True) -> None:
        self.announced: list[str] = []
        self.asked: list[str] = []
        self.answer = answer

    async def announce(self, text: str) -> None:
        self.announced.append(text)

    async def confirm(self, question: str) -> bool:
        self.asked.append(question)
        return self.answer


async def ledger_entries(db: Any) -> list[Any]:
    """Every ledger row, oldest first, read back from the database."""
    async with db.connect() as conn:
        return (await conn.execute(select(LedgerEntry).order_by(LedgerEntry.created_at))).all()
