"""The chat's side of spending: show an estimate, ask Confirm / Cancel.

Both are sent as top-level messages, not inside the tool's step, which the UI folds
away: a price and a question about money must be seen.
"""

from __future__ import annotations

import chainlit as cl

from memory.logging_setup import get_logger

log = get_logger(__name__)

CONFIRM, CANCEL = "confirm_spend", "cancel_spend"
ANSWER_TIMEOUT_S = 300


def _top_level(message: cl.Message) -> cl.Message:
    message.parent_id = None
    return message


async def announce(text: str) -> None:
    await _top_level(cl.Message(content=text, author="Atelier")).send()


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
    ask.parent_id = None
    answer = await ask.send()
    confirmed = bool(answer) and answer.get("name") == CONFIRM
    log.info("spend_confirmation", confirmed=confirmed, answered=answer is not None)
    return confirmed
