"""One agent turn: stream the model's reply, run the tools it calls, repeat until done.

Works against OpenAI and OpenAI-compatible servers (Ollama, vLLM, llama.cpp): the Chat
Completions API is pinned, and a server that fails at streaming gets one non-streamed
retry. An answer that is not a chat completion (not JSON, no `choices`) ends the turn
with a message naming the chat model server (`unreadable_answer`), not a crash.
Malformed tool calls are reported to the user and answered to the model as
errors, so a confused model cannot crash the turn or loop forever. One message runs at
most `ATELIER_MAX_TOOL_CALLS_PER_TURN` tool calls (tools/turn_guard.py): a model that asks
for more is refused call by call, the user is told once, and a model that keeps calling
after that ends the turn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import chainlit as cl
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

from chat_app import rendering
from chat_app.chat_model import chat_model
from chat_app.settings import Settings
from chat_app.tool_runner import run_tool_call
from core.errors import (
    AtelierError,
    BackendFailed,
    BackendNotConfigured,
    BackendUnavailable,
    RateLimited,
)
from core.logging_setup import get_logger
from core.redact import redact_urls
from tools.context import PromptRewriter, ToolContext
from tools.registry import schemas
from tools.turn_guard import TurnGuard

if TYPE_CHECKING:
    import openai

log = get_logger(__name__)
MAX_ROUNDS = 5
TOKEN_FLUSH_S = 0.05  # streamed text is sent at most this often (the first at once)
# What the openai client and langchain raise reading an answer that is not a chat
# completion: a body that is not JSON (JSONDecodeError), a text body ("Unexpected response
# type", a ValueError), no `choices` (TypeError), an odd chunk (AttributeError, KeyError).
_UNREADABLE = (ValueError, TypeError, AttributeError, KeyError)


def _where(settings: Settings) -> str:
    base, _ = settings.llm_endpoint
    return redact_urls(base) if base else "api.openai.com"  # user:pass@ never shown


def unreadable_answer(exc: Exception, settings: Settings) -> BackendFailed:
    """The chat model server answered, but not with a chat completion."""
    log.warning("llm_answer_unreadable", error=type(exc).__name__, detail=str(exc)[:200])
    what = "not valid JSON" if isinstance(exc, json.JSONDecodeError) else "not a chat completion"
    return BackendFailed(
        f"The chat model server at {_where(settings)} sent an answer that is {what}, so this "
        "turn stopped. Try again; if it keeps happening, check that the server is "
        "OpenAI-compatible (ATELIER_LLM_BASE_URL)."
    )


async def _read(stream: AsyncIterator[AIMessageChunk], settings: Settings) -> Any:
    """The chunks of `stream`; an answer that is not a chat completion becomes
    `unreadable_answer` (only the stream's own errors: the consumer's are not seen here)."""
    try:
        async for chunk in stream:
            yield chunk
    except _UNREADABLE as exc:
        raise unreadable_answer(exc, settings) from exc


def llm_error(exc: openai.OpenAIError, settings: Settings) -> AtelierError:
    import openai  # on first use, as everywhere here: it costs start-up time

    where = _where(settings)
    if isinstance(exc, openai.APIResponseValidationError):
        return unreadable_answer(exc, settings)
    if isinstance(exc, openai.AuthenticationError):
        return BackendNotConfigured(
            f"The chat model server at {where} rejected the API key "
            "(ATELIER_LLM_API_KEY or OPENAI_API_KEY)."
        )
    if isinstance(exc, openai.RateLimitError):
        return RateLimited("The chat model is rate-limited or out of credit. Try again shortly.")
    if isinstance(exc, openai.NotFoundError):
        return BackendNotConfigured(
            f"The chat model server at {where} does not know the model "
            f"{settings.llm_model!r} (ATELIER_LLM_MODEL)."
        )
    if isinstance(exc, openai.APIConnectionError):
        return BackendUnavailable(f"Could not reach the chat model server at {where}.")
    return BackendUnavailable(f"The chat model failed ({type(exc).__name__}). Try again.")


def prompt_rewriter(settings: Settings) -> PromptRewriter | None:
    """A tool-less chat call that refine_prompt uses; None in command mode."""
    if not settings.llm_configured:
        return None

    async def rewrite(instructions: str, prompt: str) -> str:
        import openai

        try:
            reply = await chat_model(settings, False).ainvoke(
                [SystemMessage(content=instructions), HumanMessage(content=prompt)]
            )
        except openai.OpenAIError as exc:
            raise llm_error(exc, settings) from exc
        except _UNREADABLE as exc:
            raise unreadable_answer(exc, settings) from exc
        return reply.content if isinstance(reply.content, str) else str(reply.content)

    return rewrite


async def _complete(
    settings: Settings, tools: list[dict[str, Any]], messages: list[BaseMessage]
) -> AIMessage:
    """Stream the reply into a chat message; fall back to one non-streamed call."""
    import openai

    reply = cl.Message(content="")
    if settings.llm_stream:
        full: AIMessageChunk | None = None
        try:
            stream = chat_model(settings, True).bind_tools(tools).astream(messages)
            full = await _stream_into(reply, _read(stream, settings))
        except (openai.AuthenticationError, openai.RateLimitError, openai.APIConnectionError):
            raise
        except (openai.APIError, BackendFailed) as exc:  # BackendFailed: from `_read`
            if reply.content:
                raise
            log.warning("llm_stream_failed_falling_back", error=type(exc).__name__)
            full = None
        if full is not None:
            if reply.content:
                await reply.send()
            return AIMessage(
                content=full.content,
                tool_calls=full.tool_calls,
                invalid_tool_calls=full.invalid_tool_calls,
                id=full.id,
            )
    try:
        result = await chat_model(settings, False).bind_tools(tools).ainvoke(messages)
    except _UNREADABLE as exc:
        raise unreadable_answer(exc, settings) from exc
    if isinstance(result.content, str) and result.content:
        reply.content = result.content
        await reply.send()
    return result  # type: ignore[return-value]


async def _stream_into(
    reply: cl.Message, chunks: AsyncIterator[AIMessageChunk]
) -> AIMessageChunk | None:
    """Show the streamed text as it comes; return the chunks merged into one.

    Text is sent `TOKEN_FLUSH_S` after it starts, then at most that often: a model
    faster than the eye (or a local server answering at once) had each of its tokens
    sent as a Socket.IO event of its own, which cost the server more than the text was
    worth. An answer complete within the first interval is not streamed at all: it goes
    out once, as the finished message (`_complete` sends it), instead of a stream start,
    its tokens and then the message again. The chunks are merged once at the end.
    """
    loop = asyncio.get_running_loop()
    received: list[AIMessageChunk] = []
    pending: list[str] = []
    # The clock the next send waits on: the first text's arrival until something has
    # been sent, then the last send.
    since: float | None = None
    streamed = False
    async for chunk in chunks:
        received.append(chunk)
        if isinstance(chunk.content, str) and chunk.content:
            pending.append(chunk.content)
            if since is None:
                since = loop.time()
        # Checked on every chunk: text followed by a tool call's streamed arguments is
        # shown while they come.
        if pending and since is not None and loop.time() - since >= TOKEN_FLUSH_S:
            await reply.stream_token("".join(pending))
            pending.clear()
            since, streamed = loop.time(), True
    if pending and streamed:
        await reply.stream_token("".join(pending))
    elif pending:
        reply.content = "".join(pending)  # never streamed: sent whole by the caller
    if not received:
        return None
    return received[0] + received[1:] if len(received) > 1 else received[0]


async def run_turn(settings: Settings, ctx: ToolContext, messages: list[BaseMessage]) -> None:
    import openai

    tools = schemas()
    turn = ctx.turn.guard
    if turn is None:
        turn = TurnGuard()
        ctx = replace(ctx, turn=replace(ctx.turn, guard=turn))
    for _ in range(MAX_ROUNDS):
        try:
            ai = await _complete(settings, tools, messages)
        except openai.OpenAIError as exc:
            raise llm_error(exc, settings) from exc
        messages.append(ai)
        if not ai.tool_calls and not ai.invalid_tool_calls:
            return
        # Every call counts against the message's limit, malformed ones too: past it,
        # the model is answered with a refusal for each and nothing runs.
        already_capped = turn.capped
        for bad in ai.invalid_tool_calls:
            if turn.admit_tool_call():
                messages.append(await _reject_malformed(bad))
            else:
                messages.append(_over_the_limit(turn, bad.get("id")))
        for call in ai.tool_calls:
            if turn.admit_tool_call():
                messages.append(await run_tool_call(ctx, dict(call)))
            else:
                messages.append(_over_the_limit(turn, call.get("id")))
        if turn.capped:
            if not turn.cap_told:
                turn.cap_told = True
                log.info("tool_call_limit_reached", limit=turn.max_tool_calls)
                await rendering.error(turn.cap_message())
            if already_capped:
                return  # told it was over the limit, it called again: the turn ends here
    await rendering.error(
        f"The model kept calling tools for {MAX_ROUNDS} rounds without finishing, so I stopped "
        "it. Everything made so far is saved above."
    )


def _over_the_limit(turn: TurnGuard, call_id: str | None) -> ToolMessage:
    return ToolMessage(
        content=turn.refusal_for_model(), tool_call_id=call_id or "over-limit", status="error"
    )


async def _reject_malformed(bad: dict[str, Any]) -> ToolMessage:
    name = bad.get("name") or "a tool"
    log.info("malformed_tool_call", tool=name)
    await rendering.notice(
        f"The model asked for {name} with arguments that are not valid JSON, so nothing was "
        "run. It has been asked to try again."
    )
    return ToolMessage(
        content=(
            f"Error: your call to {name} had malformed arguments (not valid JSON: "
            f"{str(bad.get('error') or '')[:200]}). Call it again with a valid JSON object."
        ),
        tool_call_id=bad.get("id") or "invalid",
        status="error",
    )
