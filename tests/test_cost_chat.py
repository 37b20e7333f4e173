"""Cost through the real app: budgets in the settings panel, Confirm / Cancel, /cost.

The app runs as a subprocess on SQLite with the fake OpenAI server as chat model and
image API; the test client answers Chainlit's `ask` the way the browser does.
"""

from __future__ import annotations

import httpx
import pytest

from tests.app_process import ADMIN_PASSWORD, app_rows
from tests.chat_client import ChatSession, login_cookie, outputs

pytestmark = pytest.mark.slow


async def test_confirm_cancel_limit_and_report(make_app, fake_openai):
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    labels = {widget["id"]: widget["label"] for widget in chat.panel()}
    assert labels["budget_thread_usd"] == "Budget for this conversation (USD)"
    assert "confirm_above_usd" in labels and "budget_day_usd" in labels

    reply = outputs(await chat.change_settings({"confirm_above_usd": "0.01"}))
    assert any("Budgets: ask above $0.01." in text for text in reply), reply

    # Cancel: the question was asked, nothing ran, nothing was spent.
    chat.ask_answer = "cancel_spend"
    reply = outputs(await chat.send("/image a fox in the snow"))
    assert len(chat.asks) == 1 and "Go ahead?" in chat.asks[0]["msg"]["output"]
    assert any(text.startswith("Estimated cost of 1 image with OpenAI") for text in reply)
    assert any("Cancelled" in text and "nothing was spent" in text for text in reply), reply
    assert fake_openai.requests_to("/images/generations") == []
    assert app_rows(app, "SELECT * FROM images") == []
    assert app_rows(app, "SELECT * FROM ledger_entries") == []

    # Confirm: it runs, and the cost the fake reported is settled in the ledger.
    chat.ask_answer = "confirm_spend"
    await chat.send("/image a fox in the snow")
    assert len(chat.asks) == 2 and len(fake_openai.requests_to("/images/generations")) == 1
    [image] = app_rows(app, "SELECT * FROM images")
    [entry] = app_rows(app, "SELECT * FROM ledger_entries")
    assert (entry["status"], entry["source"], entry["image_id"]) == (
        "settled",
        "reported",
        image["id"],
    )
    assert float(entry["actual_usd"]) == pytest.approx(image["cost_usd"])

    # A hard limit for the conversation: refused with the numbers, nothing asked or run.
    reply = outputs(
        await chat.change_settings({"budget_thread_usd": "0.05", "confirm_above_usd": ""})
    )
    assert any("$0.05 for this conversation" in text for text in reply), reply
    reply = outputs(await chat.send("/image another fox"))
    refusal = next(text for text in reply if "over the budget" in text)
    assert "limit $0.05 (set by you)" in refusal and "this request $" in refusal
    assert len(fake_openai.requests_to("/images/generations")) == 1 and len(chat.asks) == 2

    # A bad amount is refused naming the field; the budget stays.
    reply = outputs(await chat.change_settings({"budget_thread_usd": "lots"}))
    assert any("Budget for this conversation must be an amount" in t for t in reply), reply
    [row] = app_rows(app, "SELECT * FROM budgets WHERE scope = 'thread'")
    assert float(row["limit_usd"]) == pytest.approx(0.05)

    # The agent answers "what would it cost" with the table's arithmetic, spending nothing.
    reply = outputs(await chat.send("what would 20 high-quality images cost?"))
    assert any("Estimated cost of 20 × OpenAI gpt-image-2: $4.2200" in t for t in reply), reply

    # /cost: tables, a chart and a CSV, still there after a resume.
    reply = outputs(await chat.send("/cost"))
    report = next(text for text in reply if "Cost report" in text)
    assert "This conversation: $" in report and "gpt-image-2" in report
    kinds = {element["type"] for element in chat.elements}
    assert {"plotly", "file"} <= kinds, kinds
    reply = outputs(await chat.send("/cost --days nine"))
    assert any("/cost --days N" in text for text in reply), reply
    await chat.close()

    resumed = ChatSession(app.base_url, chat.cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    csv_element = next(e for e in resumed.resumed["elements"] if e["type"] == "file")
    response = httpx.get(
        app.base_url + csv_element["url"], headers={"Cookie": chat.cookie}, timeout=30
    )
    lines = response.text.splitlines()
    assert lines[0] == "day,backend,model,usd,count,unpriced"
    assert lines[1].split(",")[1:3] == ["openai", "gpt-image-2"]
    assert any(e["type"] == "plotly" for e in resumed.resumed["elements"])
    await resumed.close()


async def test_the_estimate_stays_in_its_turn_before_the_result(make_app):
    """Beside the tool's step, under the agent's turn: before the image, live and resumed."""
    app = make_app()
    chat = ChatSession(app.base_url, login_cookie(app.base_url, "admin", ADMIN_PASSWORD))
    await chat.connect()
    reply = await chat.send("draw a fox")
    texts = outputs(reply)
    estimate = next(i for i, t in enumerate(texts) if t.startswith("Estimated cost"))
    caption = next(i for i, t in enumerate(texts) if t.startswith("Image for"))
    done = next(i for i, t in enumerate(texts) if t.startswith("Done."))
    assert estimate < caption < done, texts
    assert reply[estimate]["parentId"] == reply[caption]["parentId"] == reply[done]["parentId"]
    await chat.close()
    resumed = ChatSession(app.base_url, chat.cookie)
    await resumed.connect(resume_thread=chat.thread_id)
    steps = sorted(resumed.resumed["steps"], key=lambda step: step["createdAt"])
    order = [s["output"][:15] for s in steps if s["output"].startswith(("Estimated", "Image for"))]
    assert order == ["Estimated cost ", "Image for *draw"], order
    await resumed.close()
