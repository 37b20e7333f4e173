"""Honest, quiet money (issue 15): one short line before a paid action, prominent only in
a confirmation, and quality "auto" shown as the range of tiers the provider may pick
rather than at the dearest one.

The lines are checked in-process from the real price table; the whole app (a
subprocess with the fake OpenAI server) shows them in the chat and settles the cost.
"""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from pipelines.catalogue.pricing import PriceTable
from tests.app_process import app_rows
from tests.chat_client import connected_session, outputs
from tools.spending import describe, summary

LABEL = "1 image with OpenAI gpt-image-2"


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def test_auto_quality_is_the_range_of_tiers_and_holds_the_dearest(table):
    auto = table.estimate("openai", "gpt-image-2", quality="auto", size="1024x1024")
    low = table.estimate("openai", "gpt-image-2", quality="low", size="1024x1024")
    high = table.estimate("openai", "gpt-image-2", quality="high", size="1024x1024")
    assert (auto.low_usd, auto.usd) == (low.usd, high.usd)  # a budget holds the high end
    assert summary(auto, LABEL) == (
        f"Estimated cost of {LABEL}: $0.006–$0.211 (the provider picks the quality tier)."
    )
    # A tier the user chose is one price, as before.
    assert high.low_usd is None
    assert summary(high, LABEL) == f"Estimated cost of {LABEL}: $0.2110."


def test_the_line_before_a_paid_action_is_one_quiet_line(table):
    edit = table.estimate("openai", "gpt-image-2", quality="auto", size="1024x1024", input_images=2)
    line = summary(edit, "1 edit with OpenAI gpt-image-2")
    assert "\n" not in line and "**" not in line and not line.startswith(("-", "+"))
    assert line.endswith(
        "(the provider picks the quality tier; plus 2 input image(s), billed after the run)."
    )


def test_every_line_of_the_arithmetic_has_one_bullet(table):
    """The input-image line began with "+ ", which markdown turned into a second bullet."""
    edit = table.estimate("openai", "gpt-image-2", quality="high", size="1024x1024", input_images=1)
    head, *bullets = describe(edit, "1 edit").splitlines()
    assert head.startswith("**Estimated cost of 1 edit: $")
    assert len(bullets) == len(edit.lines) == 2
    for bullet in bullets:
        assert re.match(r"^- [^-+*• ]", bullet), bullet
    assert bullets[1].startswith("- 1 input image(s), billed as input tokens")


@pytest.mark.slow
async def test_the_chat_shows_the_range_and_settles_what_was_billed(make_app, fake_openai):
    app = make_app()
    chat = await connected_session(app.base_url)
    reply = outputs(await chat.send("/image a fox in the snow --size 1024x1024"))
    [estimate] = [text for text in reply if "Estimated cost" in text]
    assert estimate == (
        f"Estimated cost of {LABEL}: $0.006–$0.211 (the provider picks the quality tier)."
    )
    [image] = app_rows(app, "SELECT cost_usd FROM images")
    assert Decimal("0.006") <= Decimal(str(image["cost_usd"])) <= Decimal("0.211")

    # Above the threshold the question is the prominent part, with the range and the hold.
    await chat.change_settings({"confirm_above_usd": "0.01"})
    chat.ask_answer = "cancel_spend"
    await chat.send("/image another fox --size 1024x1024")
    [question] = [ask["msg"]["output"] for ask in chat.asks]
    assert question.startswith(f"**{LABEL[0].upper()}{LABEL[1:]} is estimated at $0.006–$0.211**")
    assert "up to $0.2110 is held" in question and question.endswith("Go ahead?")
    await chat.close()
