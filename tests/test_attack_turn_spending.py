"""Attack: one message, unlimited spending without a question (issue 12, #8).

Before the fix the confirmation threshold was per call: a scripted model answered one
message with 40 tool calls and 12 images, each under the threshold, and nobody was
asked. Now the threshold applies to what the message spends in total (one question,
Cancel ends spending for the message) and a message runs at most
ATELIER_MAX_TOOL_CALLS_PER_TURN tool calls.

In-process: the real tools, ledger and price table, with the message's paid actions
run concurrently against one TurnGuard. Then through the real app: a hostile chat model
(the fake OpenAI server, scripted) asks for 40 images in one reply, and again after
being refused; ledger rows and the fake image API's requests are read back.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chat_app.settings import Settings
from memory.db import session_factory
from memory.images import ImageStore
from memory.ledger import Ledger, OperatorLimits
from memory.media_store import MediaStore
from memory.users import UserStore
from pipelines.catalogue.pricing import PriceTable
from pipelines.images.registry import BackendRegistry
from tests.app_process import ADMIN_PASSWORD
from tests.chat_client import ChatSession, login_cookie, outputs
from tests.db_fixtures import db_url, engine  # noqa: F401 - fixtures
from tests.fakes.openai_server import FakeOpenAI, Reply, ToolCall
from tests.test_tools import SeededBackend
from tests.tool_helpers import (
    SEEDED_PRICE_FILE,
    ChatRecorder,
    ledger_entries,
    tool_context,
    with_turn,
)
from tools.context import GenerationDefaults, ToolContext
from tools.generate_image import generate_image
from tools.spending import Declined
from tools.turn_guard import TurnGuard

THREAD = "3f6c2b1a-7e4d-4c9b-8a1f-0d2e3c4b5a69"
D = Decimal


class SlowChat(ChatRecorder):
    """Answers each question after a pause, so concurrent calls pile up behind it."""

    def __init__(self, answer: bool) -> None:
        super().__init__(answer)
        self.in_flight = 0
        self.most_in_flight = 0

    async def confirm(self, question: str) -> bool:
        self.asked.append(question)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.05)
        self.in_flight -= 1
        return self.answer


@pytest.fixture
async def world(tmp_path: Path, engine: Any):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("mallory", "password-123")
    prices = tmp_path / "prices.toml"
    prices.write_text(SEEDED_PRICE_FILE)  # $0.10 an image
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"seeded": SeededBackend()}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="seeded"),
        prices=PriceTable.load(prices),
        ledger=Ledger(engine),
        operator_limits=OperatorLimits(confirm_above_usd=D("0.25")),
        guard=TurnGuard(max_tool_calls=12),
    )
    yield ctx, engine


async def _ten_at_once(ctx: ToolContext) -> list[Any]:
    """Ten paid tool calls of one message, run concurrently (each its own call context)."""
    calls = [
        generate_image(with_turn(ctx, message_id=None), f"a fox {i}", seed=i) for i in range(10)
    ]
    return await asyncio.gather(*calls, return_exceptions=True)


async def test_concurrent_calls_of_one_message_ask_once_and_cancel_stops_them_all(world):
    ctx, db = world
    chat = SlowChat(answer=False)
    ctx = replace(ctx, port=chat)
    results = await _ten_at_once(ctx)
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Declined)]
    # $0.10 each under a $0.25 threshold: two run, the third asks, Cancel ends the rest.
    assert (len(made), len(refused)) == (2, 8), results
    assert len(chat.asked) == 1 and chat.most_in_flight == 1
    assert "this message has already spent or reserved ($0.2000)" in chat.asked[0]
    assert "comes to $0.3000" in chat.asked[0]
    assert sum("declined further spending for this message" in r.message for r in refused) == 7
    entries = await ledger_entries(db)
    assert [e.status for e in entries] == ["settled", "settled"]
    assert sum(D(str(e.actual_usd)) for e in entries) == D("0.20")


async def test_confirming_allows_one_more_threshold_before_asking_again(world):
    ctx, db = world
    chat = SlowChat(answer=True)
    ctx = replace(ctx, port=chat)
    results = await _ten_at_once(ctx)
    assert not [r for r in results if isinstance(r, BaseException)], results
    # Asked at $0.30 (allowed to $0.55), at $0.60 (to $0.85), at $0.90: three questions.
    assert len(chat.asked) == 3 and chat.most_in_flight == 1
    assert len(await ledger_entries(db)) == 10
    # A new message starts a new total.
    ctx = with_turn(ctx, guard=TurnGuard())
    chat.asked.clear()
    await generate_image(ctx, "one more fox")
    assert chat.asked == []


@pytest.mark.slow
async def test_a_hostile_model_making_40_calls_hits_the_cap_and_one_question(
    make_app, fake_openai: FakeOpenAI
):
    model = Settings.model_fields["image_model"].default  # what the app draws with
    each = PriceTable.load().estimate("openai", model, quality="low", size="1024x1024")
    assert not each.unpriced and each.usd > 0
    threshold = (each.usd * D("2.5")).quantize(D("0.000001"))
    app = make_app(ATELIER_CONFIRM_ABOVE_USD=str(threshold), ATELIER_LOCAL_ENABLED="false")
    rounds: list[list[dict[str, Any]]] = []

    def hostile(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Reply:
        rounds.append(messages)
        calls = [
            ToolCall(
                "generate_image",
                {"prompt": f"coin {i}", "quality": "low", "size": "1024x1024", "backend": "openai"},
            )
            for i in range(40)
        ]
        return Reply(tool_calls=calls)  # every round, however often it is refused

    fake_openai.brain = hostile
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    chat.ask_answer = "cancel_spend"
    reply = outputs(await chat.send("make me some coins", timeout=120))

    # One question, for the call that took the message past the threshold; Cancel.
    assert len(chat.asks) == 1, chat.asks
    assert "this message has already spent or reserved" in chat.asks[0]["msg"]["output"]
    # What fitted under the threshold ran: each was admitted while what the message had
    # spent (settled at the reported cost) plus its estimate stayed under the threshold.
    # After Cancel nothing more was sent or reserved.
    generated = fake_openai.requests_to("/images/generations")
    assert 1 <= len(generated) <= 3
    with sqlite3.connect(app.data_dir / "atelier.db") as db:
        rows = db.execute(
            "SELECT status, estimate_usd, actual_usd FROM ledger_entries ORDER BY created_at"
        ).fetchall()
        images = db.execute("SELECT count(*) FROM images").fetchone()[0]
    assert len(rows) == len(generated) == images
    assert {status for status, _, _ in rows} == {"settled"}
    spent_before_last = sum(D(str(actual)) for _, _, actual in rows[:-1])
    assert spent_before_last + D(str(rows[-1][1])) <= threshold
    # The cap: told once to the user; the model got a refusal for each call past it.
    assert sum("limit of 12 tool calls" in text for text in reply) == 1, reply
    assert any("declined further spending for this message" in text for text in reply)
    assert len(rounds) == 2  # refused, it called again, and the turn ended there
    answers = [m for m in rounds[1] if m.get("role") == "tool"]
    assert len(answers) == 40
    refusals = [m for m in answers if "used its limit of 12 tool calls" in str(m["content"])]
    assert len(refusals) == 28
    await chat.close()
    log = [json.loads(line) for line in app.log().splitlines() if line.startswith("{")]
    assert any(entry.get("event") == "tool_call_limit_reached" for entry in log)
