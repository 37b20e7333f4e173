"""The live bar of a job in the chat: when it appears, and that a quick job shows none."""

from __future__ import annotations

import asyncio
from typing import Any

from chainlit.context import init_http_context
from chainlit.emitter import BaseChainlitEmitter

from chat_app import progress_display
from chat_app.progress_display import ProgressDisplays


class Emitted(BaseChainlitEmitter):
    """Chainlit's do-nothing emitter, keeping each step event it would have sent."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.events: list[tuple[str, str]] = []

    async def send_step(self, step_dict: Any) -> None:
        self.events.append(("new", step_dict["output"]))

    async def update_step(self, step_dict: Any) -> None:
        self.events.append(("update", step_dict["output"]))

    async def delete_step(self, step_dict: Any) -> bool:
        self.events.append(("delete", step_dict["output"]))
        return True


def _chat() -> Emitted:
    context = init_http_context(thread_id="t")
    context.emitter = Emitted(context.session)
    return context.emitter


async def test_a_job_done_within_the_hold_shows_no_bar_at_all() -> None:
    shown = _chat()
    displays = ProgressDisplays()
    progress = displays.new("OpenAI gpt-image-2")
    progress.report(0, 100, "OpenAI is drawing")
    progress.report(100, 100, "OpenAI is drawing")
    await asyncio.sleep(0.05)  # the reports are delivered; the job ends
    await displays.close()
    await asyncio.sleep(progress_display.BAR_HOLD_S + 0.1)
    assert shown.events == []


async def test_a_longer_job_shows_its_bar_after_the_hold_and_removes_it() -> None:
    shown = _chat()
    displays = ProgressDisplays()
    progress = displays.new("OpenAI gpt-image-2")
    progress.report(0, 100, "OpenAI is drawing")
    await asyncio.sleep(progress_display.BAR_HOLD_S / 2)
    assert shown.events == []  # still held
    await asyncio.sleep(progress_display.BAR_HOLD_S)
    assert [kind for kind, _ in shown.events] == ["new"]
    assert "OpenAI gpt-image-2" in shown.events[0][1] and "0%" in shown.events[0][1]
    progress.report(40, 100, "OpenAI is drawing")
    await asyncio.sleep(progress_display.MIN_INTERVAL_S + 0.1)
    assert shown.events[-1][0] == "update" and "40%" in shown.events[-1][1]
    await displays.close()
    assert shown.events[-1][0] == "delete"
