"""The agent loop in-process (chat_app/agent.py run_turn), driven by a scripted chat model.

The model is the fake OpenAI server's brain, reached by the real langchain/openai client;
the tools run against the seeded backend and a real SQLite database. What the chat shows
is recorded by a Chainlit emitter in this process: no app subprocess, no socket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chainlit.context import init_http_context
from chainlit.emitter import BaseChainlitEmitter
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage
from sqlalchemy import select

from chat_app.agent import MAX_ROUNDS, run_turn
from chat_app.settings import Settings
from memory.db import session_factory
from memory.images import ImageStore
from memory.media_store import MediaStore
from memory.models import Image
from memory.users import UserStore
from pipelines.images.registry import BackendRegistry
from tests.db_fixtures import engine  # noqa: F401 - fixtures
from tests.fakes.openai_server import FakeOpenAI, Reply, ToolCall
from tests.test_tools import SeededBackend
from tests.tool_helpers import tool_context
from tools.context import GenerationDefaults
from tools.turn_guard import TurnGuard

THREAD = "0a7e3c52-6b1d-4f8e-9c2a-5d4b3a2f1e09"


class Shown(BaseChainlitEmitter):
    """Chainlit's do-nothing emitter, keeping what would have reached the browser."""

    def __init__(self, session: Any) -> None:
        super().__init__(session)
        self.steps: dict[str, dict[str, Any]] = {}
        self.tokens: list[str] = []

    async def send_step(self, step_dict: Any) -> None:
        self.steps[step_dict["id"]] = dict(step_dict)

    async def update_step(self, step_dict: Any) -> None:
        self.steps[step_dict["id"]] = {**self.steps.get(step_dict["id"], {}), **step_dict}

    async def stream_start(self, step_dict: Any) -> None:  # a stream's first text comes here
        self.tokens.append(step_dict.get("output") or "")

    async def send_token(self, id: str, token: str, is_sequence=False, is_input=False) -> None:  # noqa: A002, ANN001
        self.tokens.append(token)

    def texts(self, kind: str | None = None) -> list[str]:
        return [
            s.get("output") or "" for s in self.steps.values() if kind in (None, s.get("type"))
        ]


def in_a_chat() -> Shown:
    """A Chainlit context for the calling test, whose emitter records what is shown."""
    context = init_http_context(thread_id=THREAD)
    context.emitter = Shown(context.session)
    return context.emitter


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the loop does not depend on the database (stores are tested on both)."""
    return f"sqlite+aiosqlite:///{tmp_path / 'atelier.db'}"


@pytest.fixture
async def turn(tmp_path: Path, engine, fake_openai: FakeOpenAI):  # noqa: F811
    account = await UserStore(session_factory(engine)).add("ann", "password-123")
    seeded = SeededBackend()
    ctx = tool_context(
        thread_id=THREAD,
        user_id=account.id,
        backends=BackendRegistry({"seeded": seeded}),
        images=ImageStore(engine, MediaStore(tmp_path / "media")),
        defaults=GenerationDefaults(backend="seeded"),
        guard=TurnGuard(max_tool_calls=4),
    )

    def settings(**more: Any) -> Settings:
        return Settings(
            openai_api_key="sk-test-not-a-real-key",
            openai_base_url=fake_openai.base_url,
            llm_model="gpt-test",
            max_retries=0,
            **more,
        )

    yield ctx, seeded, settings, engine


def _ask(text: str) -> list[BaseMessage]:
    return [SystemMessage(content="You are a test."), HumanMessage(content=text)]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_tool_call_runs_and_the_model_answers_with_its_result(turn, stream):
    ctx, seeded, settings, db = turn
    shown = in_a_chat()
    messages = _ask("draw a red fox in the snow")
    await run_turn(settings(llm_stream=stream), ctx, messages)

    [request] = seeded.requests
    assert request.prompt == "draw a red fox in the snow"
    [result] = [m for m in messages if isinstance(m, ToolMessage)]
    assert result.status != "error" and "draw a red fox" in str(result.content)
    assert messages[-1].content.startswith("Done. ")  # the default brain's closing reply
    [tool_step] = [s for s in shown.steps.values() if s.get("type") == "tool"]
    assert tool_step["name"] == "generate_image" and not tool_step.get("isError")
    assert any(text.startswith("Done. ") for text in shown.texts("assistant_message"))
    async with db.connect() as conn:
        saved = (await conn.execute(select(Image.thread_id, Image.prompt_sent))).all()
    assert saved == [(THREAD, "draw a red fox in the snow")]


LONG_REPLY = " ".join(f"word{i}" for i in range(40))


async def test_a_fast_stream_is_shown_whole_in_one_message(turn, fake_openai, monkeypatch):
    """A model faster than the eye: its 40 tokens, all there within the first flush
    interval, reach the browser as the finished message alone, with no stream events
    before it, and nothing of the text is lost.

    The interval is widened to 5 s here: on a loaded CI machine the 40 chunks once took
    longer than the real 50 ms to arrive, which is a slow model, not a fast one."""
    monkeypatch.setattr("chat_app.agent.TOKEN_FLUSH_S", 5.0)
    ctx, _, settings, _ = turn
    shown = in_a_chat()
    fake_openai.brain = lambda messages, tools: Reply(content=LONG_REPLY)
    messages = _ask("say a lot")
    await run_turn(settings(llm_stream=True), ctx, messages)
    assert messages[-1].content == LONG_REPLY
    assert shown.tokens == []
    assert shown.texts("assistant_message") == [LONG_REPLY]


async def test_a_stream_slower_than_the_interval_is_shown_in_a_few_events(turn, fake_openai):
    """40 tokens 10 ms apart: shown while they come, in a handful of events, the first
    one interval after the text starts, and whole in the end."""
    ctx, _, settings, _ = turn
    shown = in_a_chat()
    fake_openai.chat_interval_s = 0.01
    fake_openai.brain = lambda messages, tools: Reply(content=LONG_REPLY)
    messages = _ask("say a lot, slowly")
    await run_turn(settings(llm_stream=True), ctx, messages)
    assert "".join(shown.tokens) == LONG_REPLY
    assert 2 <= len(shown.tokens) <= 12, shown.tokens
    assert shown.texts("assistant_message") == [LONG_REPLY]


async def test_a_slow_stream_is_still_shown_token_by_token(turn, fake_openai):
    """Tokens further apart than the flush interval are each shown as they come."""
    ctx, _, settings, _ = turn
    shown = in_a_chat()
    fake_openai.chat_interval_s = 0.15
    fake_openai.brain = lambda messages, tools: Reply(content="one two three four")
    messages = _ask("say four words")
    await run_turn(settings(llm_stream=True), ctx, messages)
    assert "".join(shown.tokens) == "one two three four"
    assert len(shown.tokens) >= 3, shown.tokens  # not held back until the end


async def test_malformed_arguments_are_told_to_the_user_and_the_model(turn, fake_openai):
    ctx, seeded, settings, _ = turn
    shown = in_a_chat()
    messages = _ask("this will be malformed")
    await run_turn(settings(), ctx, messages)
    assert seeded.requests == []
    [refusal] = [m for m in messages if isinstance(m, ToolMessage)]
    assert refusal.status == "error" and "not valid JSON" in str(refusal.content)
    assert any("not valid JSON, so nothing was run" in text for text in shown.texts())
    # The model saw the refusal as the answer to its call.
    assert fake_openai.requests_to("/chat/completions")[-1].json["messages"][-1]["role"] == "tool"


async def test_a_model_that_never_stops_calling_is_capped(turn, fake_openai):
    ctx, seeded, settings, _ = turn
    shown = in_a_chat()
    fake_openai.brain = lambda messages, tools: Reply(
        tool_calls=[ToolCall("generate_image", {"prompt": f"coin {i}"}) for i in range(3)]
    )
    messages = _ask("coins")
    await run_turn(settings(), ctx, messages)
    assert len(seeded.requests) == 4  # the guard's limit for this turn
    refusals = [m for m in messages if isinstance(m, ToolMessage) and m.status == "error"]
    # Round 1 runs three, round 2 runs one and refuses two (the user is told), round 3 is
    # refused whole and, as the model kept calling after being told, ends the turn.
    assert len(refusals) == 2 + 3
    assert len(fake_openai.requests_to("/chat/completions")) == 3 < MAX_ROUNDS
    assert sum("limit of 4 tool calls" in text for text in shown.texts()) == 1


async def test_an_unknown_tool_is_refused_naming_the_real_ones(turn, fake_openai):
    ctx, seeded, settings, _ = turn
    in_a_chat()
    calls = iter([Reply(tool_calls=[ToolCall("teleport", {"to": "mars"})]), Reply(content="Ok.")])
    fake_openai.brain = lambda messages, tools: next(calls)
    messages = _ask("teleport me")
    await run_turn(settings(), ctx, messages)
    [refusal] = [m for m in messages if isinstance(m, ToolMessage)]
    assert "There is no tool called 'teleport'" in str(refusal.content)
    assert "generate_image" in str(refusal.content)
    assert messages[-1].content == "Ok." and seeded.requests == []
