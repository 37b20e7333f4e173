"""Run one tool call as a visible step, for the agent and for commands alike.

Errors become the step's error output and a chat message; the model gets the same text
as the tool result so it can explain or retry with other arguments.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import chainlit as cl
from langchain_core.messages import ToolMessage

from chat_app import rendering
from chat_app.chat_port import ChatPort
from chat_app.progress_display import ProgressDisplays
from core.errors import AtelierError
from core.logging_setup import get_logger
from tools.context import ToolArtifact, ToolContext
from tools.registry import BY_NAME

log = get_logger(__name__)


async def run_tool_call(ctx: ToolContext, call: dict[str, Any]) -> ToolMessage:
    """Validate and run one call (from the model or a command) as a step of its own."""
    name, call_id = call["name"], call.get("id") or "call"
    tool = BY_NAME.get(name)
    if tool is None:
        text = f"There is no tool called {name!r}. Available: {', '.join(sorted(BY_NAME))}."
        await rendering.error(text)
        return ToolMessage(content=f"Error: {text}", tool_call_id=call_id, status="error")
    step = cl.Step(name=name, type="tool")
    step.input = json.dumps(call.get("args") or {}, ensure_ascii=False)
    artifact: ToolArtifact | None = None
    failure: str | None = None
    displays = ProgressDisplays()
    stopped = False
    async with step:
        call_ctx = replace(ctx, turn=replace(ctx.turn, message_id=step.id), port=ChatPort(displays))
        try:
            content, artifact = await tool.run(call_ctx, tool.validate(call.get("args") or {}))
            step.output = str(content)
        except AtelierError as exc:
            failure = exc.message
        except asyncio.CancelledError:
            # The user pressed stop. Backends have cancelled their own work by now; the
            # step says so (Chainlit would record an empty error) before unwinding.
            displays.cancel_all()
            stopped = True
            step.output = "Stopped by the user; nothing from this call was kept."
            step.is_error = True
        finally:  # an unexpected error too: no bar is left on screen
            await displays.close()
        if failure is not None:
            log.info("tool_failed", tool=name, reason=failure[:200])
            step.is_error = True
            step.output = failure
    if stopped:
        log.info("tool_stopped", tool=name)
        raise asyncio.CancelledError
    if failure is not None:
        await rendering.error(failure)
        return ToolMessage(content=f"Error: {failure}", tool_call_id=call_id, status="error")
    if artifact is not None:
        await rendering.images(artifact)
    return ToolMessage(content=step.output, tool_call_id=call_id)
