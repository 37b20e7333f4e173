"""The chat's side of spending: show an estimate, ask Confirm / Cancel.

Both are sent beside the tool's step, not inside it (the UI folds a step away: a price
and a question about money must be seen), and in the same turn as the step, so they
keep their place in the conversation, live and after a resume. A turn of the agent
hangs its messages under Chainlit's run step; a command's have no parent.
"""

from __future__ import annotations

import chainlit as cl

from chat_app.rendering import beside_current_step
from core.logging_setup import get_logger

log = get_logger(__name__)

CONFIRM, CANCEL = "confirm_spend", "cancel_spend"
ANSWER_TIMEOUT_S = 300


async def announce(text: str) -> None:
    await beside_current_step(cl.Message(content=text, author="Atelier")).send()


async def confirm(question: str) -> bool:
    """True only when the user presses Confirm; Cancel or no answer is a no."""
    ask = cl.AskActionMessage(
        content=question,
        actions=[
            cl.Action(name=CONFIRM, label="Confirm", payload={"answer": "confirm"}),
            cl.Action(name=CANCEL, label="Cancel", payload={"answer": "cancel"}),
        ],
        author="Atelier",
        timeout=ANSWER_TIMEOUT_S,
    )
    beside_current_step(ask)
    answer = await ask.send()
    confirmed = bool(answer) and answer.get("name") == CONFIRM
    log.info("spend_confirmation", confirmed=confirmed, answered=answer is not None)
    return confirmed
