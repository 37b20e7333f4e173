"""A batch survives kill -9: the restarted app finishes it alone, paying once per item.

The real app runs as a subprocess (on SQLite and on PostgreSQL) against a fake OpenAI
that answers image requests after 0.3 s. A user starts a batch of 30 with `/batch`
over Chainlit's protocol and confirms it once. The fake answers the first 15 image
requests and holds every later one, as a provider still working; once those 15 items
are done and settled in the database (nothing answered but not yet stored), the app is
killed with SIGKILL while it waits on the held requests. The held requests then fail
(nobody is there to read them), the app starts again on the same database, and nobody
connects: the batch must finish on its own, every item done, each item's image asked
for successfully exactly once, nothing left reserved, and the ledger's settled total
equal to what the items say they cost.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from memory.db import create_engine
from tests.app_process import ADMIN_PASSWORD, AppProcess
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url  # noqa: F401 - fixture
from tests.fakes.openai_server import FakeOpenAI, RecordedRequest, _ApiError

pytestmark = pytest.mark.slow

ITEMS = 30
ANSWERED_BEFORE_CRASH = 15
LATENCY_S = 0.3
LABELS = [f"obj-{i:03d}" for i in range(ITEMS)]  # none is a substring of another


class CountingOpenAI(FakeOpenAI):
    """The fake OpenAI, answering the first `answer_first` image requests and holding the
    rest until `drop_held()`, which fails them; every image request's outcome is noted
    by prompt (ok, or dropped)."""

    def __init__(self, **kwargs: Any) -> None:
        self.answer_first: int | None = None  # None: answer every request
        self.held = 0
        self.outcomes: list[tuple[str, str]] = []  # (prompt, "ok" | "dropped")
        self._passed = 0
        self._lock = threading.Lock()
        self._dropped = threading.Event()
        super().__init__(**kwargs)

    def drop_held(self) -> None:
        """Fail the held requests (the app that sent them is gone); answer all later ones."""
        with self._lock:
            self.answer_first = None
        self._dropped.set()

    def ok_per_prompt(self) -> Counter[str]:
        with self._lock:
            return Counter(prompt for prompt, outcome in self.outcomes if outcome == "ok")

    async def _generate(self, request: Any, recorded: RecordedRequest) -> Any:
        prompt = str((recorded.json or {}).get("prompt") or "")
        with self._lock:
            hold = self.answer_first is not None and self._passed >= self.answer_first
            self._passed += not hold
            self.held += hold
        if hold:
            await asyncio.to_thread(self._dropped.wait)  # set by the fixture at the latest
            with self._lock:
                self.outcomes.append((prompt, "dropped"))
            raise _ApiError(500, "The app that asked is gone.", type="server_error")
        response = await super()._generate(request, recorded)
        with self._lock:
            self.outcomes.append((prompt, "ok" if response.status_code == 200 else "error"))
        return response


@pytest.fixture
def fake_openai() -> Iterator[CountingOpenAI]:
    with CountingOpenAI(latency_s=LATENCY_S) as fake:
        yield fake
        fake.drop_held()


async def _rows(engine: AsyncEngine, sql: str) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(text(sql))).mappings()]


async def _until(check: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:
    """Poll the database until `check` holds; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def _usd(value: Any) -> Decimal:
    return Decimal(str(value or 0))


async def _start_batch(app: AppProcess) -> None:
    """Log in, send `/batch` with the list, confirm the one estimate, disconnect."""
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    chat.ask_answer = "confirm_spend"
    await chat.connect()
    try:
        replies = outputs(await chat.send("/batch " + ", ".join(LABELS), timeout=120))
    finally:
        await chat.close()
    assert len(chat.asks) == 1, f"asked {len(chat.asks)} times: {replies}"
    assert not any("Could not do that" in t or "Something went wrong" in t for t in replies)


async def test_a_batch_killed_halfway_finishes_after_restart_paying_once(
    db_url: str,  # noqa: F811
    make_app: Callable[..., AppProcess],
    fake_openai: CountingOpenAI,
) -> None:
    app = make_app(ATELIER_DATABASE_URL=db_url)
    engine = create_engine(db_url)
    try:
        fake_openai.answer_first = ANSWERED_BEFORE_CRASH
        await _start_batch(app)
        [batch] = await _rows(engine, "SELECT * FROM batches")
        assert batch["item_count"] == ITEMS and batch["status"] == "running"
        batch_id = batch["id"]

        async def reserved() -> int:
            ledger = await _rows(engine, "SELECT status FROM ledger_entries")
            return Counter(entry["status"] for entry in ledger)["reserved"]

        async def halfway() -> bool:
            """15 items done and settled; the provider's slots all hold requests that
            never return (more items than slots are under way: those wait their turn
            at the provider's gate, their money reserved)."""
            done = await _rows(engine, "SELECT id FROM batch_items WHERE status = 'done'")
            ledger = await _rows(engine, "SELECT status FROM ledger_entries")
            statuses = Counter(entry["status"] for entry in ledger)
            return (
                len(done) == ANSWERED_BEFORE_CRASH
                and statuses["settled"] == ANSWERED_BEFORE_CRASH
                and statuses["reserved"] >= fake_openai.held >= 1
            )

        await _until(halfway, 120, f"{ANSWERED_BEFORE_CRASH} items done, the rest held")
        await asyncio.sleep(0.5)  # every item under way has made its reservation
        held_reservations = await reserved()
        assert app.proc is not None
        app.proc.kill()  # SIGKILL: no clean-up of any kind
        app.proc.wait()
        app.proc = None
        fake_openai.drop_held()

        # Started again, and nobody connects: the batch goes on by itself.
        app.start()

        async def finished() -> bool:
            [row] = await _rows(engine, f"SELECT status FROM batches WHERE id = '{batch_id}'")
            return row["status"] in ("done", "stopped")

        await _until(finished, 240, "the batch to finish after the restart")
        items = await _rows(
            engine, f"SELECT * FROM batch_items WHERE batch_id = '{batch_id}' ORDER BY position"
        )
        [batch] = await _rows(engine, f"SELECT * FROM batches WHERE id = '{batch_id}'")
        assert batch["status"] == "done", batch
        assert [item["label"] for item in items] == LABELS
        not_done = [(i["label"], i["status"], i["error"]) for i in items if i["status"] != "done"]
        assert not_done == [], not_done

        # Each item's image was asked for successfully exactly once, over both processes.
        ok = fake_openai.ok_per_prompt()
        per_item = {label: sum(n for p, n in ok.items() if label in p) for label in LABELS}
        assert per_item == dict.fromkeys(LABELS, 1), per_item
        assert sum(ok.values()) == ITEMS
        images = await _rows(engine, f"SELECT id FROM images WHERE batch_id = '{batch_id}'")
        assert len(images) == ITEMS  # one stored image per item, none twice

        # Paid once: nothing left reserved, and what was settled is what the items cost.
        entries = await _rows(engine, "SELECT * FROM ledger_entries")
        assert [e for e in entries if e["status"] == "reserved"] == []
        settled = sum(_usd(e["actual_usd"]) for e in entries if e["status"] == "settled")
        items_cost = sum(_usd(item["cost_usd"]) for item in items)
        assert settled == items_cost and settled > 0, (settled, items_cost)
        assert all(e["batch_id"] == batch_id for e in entries if e["status"] == "settled")
        assert len([e for e in entries if e["status"] == "settled"]) == ITEMS
        # What was under way at the kill (held requests, and items waiting for a slot)
        # was released as interrupted: never paid.
        released = [e for e in entries if e["status"] == "released"]
        assert len(released) == held_reservations, released
        assert all(e["interrupted_at"] for e in released), released
    finally:
        await engine.dispose()
