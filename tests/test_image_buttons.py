"""An image's buttons as they go down the socket: the same event Chainlit's would be."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import chainlit as cl
from chainlit.context import init_http_context
from chainlit.emitter import BaseChainlitEmitter

from chat_app import image_buttons
from memory.images import ImageRecord


class Emitted(BaseChainlitEmitter):
    """Chainlit's do-nothing emitter, keeping each event it would have sent."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.events: list[tuple[str, Any]] = []

    async def emit(self, event: str, data: Any) -> None:
        self.events.append((event, data))


def _record() -> ImageRecord:
    return ImageRecord(
        id="0d61f0c2-5d1e-4f7e-9a44-2f1c3b4d5e6f",
        thread_id="t",
        media_key="k.png",
        mime="image/png",
        prompt_typed="a fox",
        backend="openai",
        model="gpt-image-2",
        parameters={},
        seed=None,
        width=1024,
        height=1024,
        cost_usd=Decimal("0.0420"),
        duration_ms=None,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        parent_id=None,
        prompt_sent="a red fox",
    )


async def test_each_button_is_sent_as_chainlits_own_action_event() -> None:
    context = init_http_context(thread_id="t")
    context.emitter = emitted = Emitted(context.session)
    buttons = image_buttons.actions_for(_record())
    assert [b.name for b in buttons] == [
        image_buttons.VARY,
        image_buttons.EDIT,
        image_buttons.BIGGER,
        image_buttons.ANIMATE,
        image_buttons.KEEP,
        image_buttons.DETAILS,
    ]
    for button in buttons:
        await button.send(for_id="message-1")
    assert [event for event, _ in emitted.events] == ["action"] * len(buttons)
    # What Chainlit's Action.send would have sent for the same button, key for key.
    assert [data for _, data in emitted.events] == [cl.Action.to_dict(b) for b in buttons]
    assert all(data["forId"] == "message-1" for _, data in emitted.events)
    assert "Cost: $0.0420" in emitted.events[-1][1]["label"]
