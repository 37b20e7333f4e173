"""A streamed chat answer read as dicts (chat_app/chat_stream.py), from the fake OpenAI
server through the real `openai` client: what the server sent, event by event, its
errors as the SDK raises them, and a silent stream bounded."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from chainlit.context import init_http_context
from chainlit.emitter import BaseChainlitEmitter
from langchain_core.messages import HumanMessage, SystemMessage

from chat_app.agent import run_turn
from chat_app.chat_stream import ChunkDicts
from chat_app.request_body import RequestBody
from pipelines.images.registry import BackendRegistry
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.test_provider_answers import chat_settings
from tests.tool_helpers import tool_context

THREAD = "00000000-0000-4000-8000-0000000000c5"
PARAMS = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _client(fake: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)


def _chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


async def _read_all(fake: FakeOpenAI, silence_s: float = 120) -> list[dict[str, Any]]:
    async with _client(fake) as client:
        body, options = RequestBody().build(PARAMS)
        stream = await ChunkDicts.post(client, body, options, silence_s)
        async with stream:
            return [chunk async for chunk in stream]


async def test_the_chunks_are_the_servers_json_objects(fake_openai):
    """The same objects as the SDK's own stream reads, unset fields left out."""
    fake_openai.brain = lambda messages, tools: Reply(content="one two three")
    chunks = await _read_all(fake_openai)
    async with _client(fake_openai) as client:
        theirs = [
            c.model_dump(exclude_unset=True)
            async for c in await client.chat.completions.create(**PARAMS)
        ]
    assert all(type(c) is dict for c in chunks)
    # Two requests: their ids differ, and so may their times (a second may turn between).
    assert [{**c, "id": "", "created": 0} for c in chunks] == [
        {**c, "id": "", "created": 0} for c in theirs
    ]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "one two three" and chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_comments_crlf_split_data_an_event_without_data_and_data_after_done(fake_openai):
    first = json.dumps(_chunk("Hello "), indent=1).splitlines()  # JSON over several lines
    body = (
        ": keepalive\r\n\r\n"
        + "".join(f"data: {line}\r\n" for line in first)
        + "\r\n"
        + "event: ignored-name\n"
        + f"data:{json.dumps(_chunk('world'))}\n\n"
        + "id: 7\nretry: 100\n\n"  # an event with no data
        + f"data: {json.dumps(_chunk('', 'stop'))}\n\n"
        + "data: [DONE]\n\n"
        + f"data: {json.dumps(_chunk('after done'))}"  # past [DONE]: read, not used
    )
    fake_openai.answer_next("/chat/completions", body, content_type="text/event-stream")
    chunks = await _read_all(fake_openai)
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["Hello ", "world", None]


async def test_an_error_sent_in_the_stream_is_the_sdks_api_error(fake_openai):
    body = (
        f"data: {json.dumps(_chunk('Hel'))}\n\n"
        'data: {"error": {"message": "The server is overloaded", "type": "server_error"}}\n\n'
    )
    fake_openai.answer_next("/chat/completions", body, content_type="text/event-stream")
    with pytest.raises(openai.APIError, match="The server is overloaded") as caught:
        await _read_all(fake_openai)
    assert caught.value.body == {"message": "The server is overloaded", "type": "server_error"}


async def test_a_status_error_is_raised_when_the_request_is_sent(fake_openai):
    fake_openai.answer_next("/chat/completions", {"error": {"message": "no"}}, status=401)
    async with _client(fake_openai) as client:
        with pytest.raises(openai.AuthenticationError):
            await ChunkDicts.post(client, *RequestBody().build(PARAMS))


async def test_a_stream_silent_for_longer_than_the_bound_times_out(fake_openai):
    fake_openai.chat_interval_s = 0.5
    with pytest.raises(openai.APITimeoutError):
        await _read_all(fake_openai, silence_s=0.2)


async def test_chunks_closer_than_the_bound_never_time_out(fake_openai):
    """The bound is on silence, not on the whole answer: 6 chunks 0.1 s apart take longer
    than the 0.25 s bound in all, and are all read."""
    fake_openai.chat_interval_s = 0.1
    fake_openai.brain = lambda messages, tools: Reply(content="a b c d")
    chunks = await _read_all(fake_openai, silence_s=0.25)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_an_error_in_the_stream_in_a_chat_turn_is_retried_once_plainly(fake_openai):
    """The agent's streamed call meets the error before any text: it falls back to one
    plain call (chat_app/agent.py), which answers."""
    init_http_context(thread_id=THREAD).emitter = BaseChainlitEmitter(None)  # type: ignore[arg-type]
    body = 'data: {"error": {"message": "try later"}}\n\n'
    fake_openai.answer_next("/chat/completions", body, content_type="text/event-stream")
    fake_openai.brain = lambda messages, tools: Reply(content="Plain answer.")
    ctx = tool_context(user_id="u", thread_id=THREAD, backends=BackendRegistry({}), images=None)
    messages = [SystemMessage(content="You are a test."), HumanMessage(content="hello")]
    await run_turn(chat_settings(fake_openai, llm_stream=True), ctx, messages)
    assert messages[-1].content == "Plain answer."
    assert len(fake_openai.requests_to("/chat/completions")) == 2


async def test_a_body_built_here_is_the_one_the_sdk_would_send(fake_openai):
    """chat_app/request_body.py against the SDK's own `create`: the same JSON object
    reaches the server (tools spliced in from their kept encoding, `extra_body` merged,
    non-ASCII text as is), with the same extra header, and twice in a row."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "draw",
                "description": "Draw a café — «quoted»",
                "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}},
            },
        }
    ]
    params = {
        **PARAMS,
        "messages": [{"role": "user", "content": 'naïve ☕ "quoted"\n'}],
        "tools": tools,
        "stream_options": {"include_usage": True},
        "temperature": None,
        "parallel_tool_calls": openai.NOT_GIVEN,
        "extra_body": {"user": "u-1"},
        "extra_headers": {"X-Atelier-Test": "yes"},
    }
    fake_openai.brain = lambda messages, tools: Reply(content="ok")
    built = RequestBody()
    async with _client(fake_openai) as client:
        for _ in range(2):
            body, options = built.build(params)
            async with await ChunkDicts.post(client, body, options) as stream:
                assert [c async for c in stream]
        async for _ in await client.chat.completions.create(**params):
            pass
    ours_1, ours_2, theirs = fake_openai.requests_to("/chat/completions")
    assert ours_1.json == ours_2.json == theirs.json
    assert ours_1.json["tools"] == tools and ours_1.json["user"] == "u-1"
    assert ours_1.headers["x-atelier-test"] == theirs.headers["x-atelier-test"] == "yes"
    assert ours_1.headers["content-type"] == "application/json"


def test_a_body_without_other_fields_is_still_json():
    body, options = RequestBody().build({"tools": [{"type": "function"}], "timeout": 5.0})
    assert json.loads(body) == {"tools": [{"type": "function"}]} and options == {"timeout": 5.0}


def test_values_the_sdk_encodes_are_encoded_alike():
    """A pydantic model and a datetime, as the SDK's own encoder writes them; anything
    else is refused, as there."""
    from datetime import UTC, datetime

    import pydantic
    from openai._utils._json import openapi_dumps

    class Format(pydantic.BaseModel):
        kind: str = "json"
        note: str | None = None

    params = {"model": "m", "when": datetime(2026, 12, 2, tzinfo=UTC), "fmt": Format(note="x")}
    body, _ = RequestBody().build(params)
    assert json.loads(body) == json.loads(openapi_dumps(params))
    with pytest.raises(TypeError):
        RequestBody().build({"model": object()})
