"""The chat model client, built once per endpoint and sent requests without re-checking.

Two costs were paid on every agent turn, on the event loop (measured at 50 sessions):

- building `ChatOpenAI` (about 7 ms: pydantic validation, two openai clients), twice
  per turn. Its settings are fixed for the life of the process, so one is kept per
  endpoint and streaming mode;
- the openai SDK walking every request's `messages` through its type-driven transform
  (about 0.25 ms per message: 10 ms for a 40-message history, per model call). The
  messages langchain hands over are plain JSON already (roles and strings, tool calls);
  the transform changes nothing in them. They are passed as the body's `messages` via
  `extra_body`, which the SDK merges into the JSON as given, so the request on the
  wire is the same.
- the same transform over the tools' schemas (about 1 ms per call for our 20-odd tools,
  measured at 50 sessions: 8 % of the loop's busy time). They are static JSON, built
  once per process (tools/schemas), and go through `extra_body` the same way.
- the default HTTP transport probing every idle pooled connection (a `select` and a
  `getpeername` each) when a request starts and again when its response closes: at 50
  sessions, 50-odd connections, 7 % of the loop's busy time. The SDK's aiohttp
  transport (`openai.DefaultAioHttpClient`, "for improved concurrency performance" in
  its README) takes a pooled connection without probing the others. Its session
  belongs to the event loop that opened it, so the clients are kept per loop, and
  `close_chat_models` closes the current loop's when the app stops.
- each streamed chunk made into an SDK model and dumped back into a dict by LangChain:
  a streamed reply is read as dicts instead (chat_app/chat_stream.py).
- the tools' schemas encoded to JSON again for every streamed call: their encoding is
  kept, and the body built here (chat_app/request_body.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chat_app.chat_stream import ChunkDicts
from chat_app.request_body import RequestBody

if TYPE_CHECKING:
    from langchain_openai import ChatOpenAI
    from pydantic import SecretStr

    from chat_app.settings import Settings


_AS_GIVEN = ("messages", "tools")  # plain JSON already; "messages" is required by the SDK


class _MessagesAsGiven:
    """`chat.completions` whose `create` skips the SDK's transform of messages and tools."""

    def __init__(self, completions: Any, client: Any) -> None:
        self._completions = completions
        self._client = client  # the AsyncOpenAI the completions belong to
        self._body = RequestBody()

    async def create(self, **params: Any) -> Any:
        if params.get("stream"):  # every agent turn's call: its body encoded here
            body, options = self._body.build(params)
            return await ChunkDicts.post(self._client, body, options)
        given = {key: params.pop(key) for key in _AS_GIVEN if params.get(key) is not None}
        if given:
            params["extra_body"] = {**(params.get("extra_body") or {}), **given}
        params.setdefault("messages", [])  # required by the signature; replaced in the body
        return await self._completions.create(**params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


def chat_model(settings: Settings, streaming: bool) -> ChatOpenAI:
    """This event loop's client for the configured chat model (one per streaming mode)."""
    base_url, api_key = settings.llm_endpoint
    key = (
        settings.llm_model,
        base_url,
        api_key,
        streaming,
        settings.request_timeout_s,
        settings.max_retries,
        asyncio.get_running_loop(),
    )
    llm = _clients.get(key)
    if llm is None:
        llm = _clients[key] = _build(*key[:-1])
        while len(_clients) > _KEEP:  # settings changed (tests): the oldest go
            oldest = next(iter(_clients))
            _close_evicted(oldest[-1], _clients.pop(oldest))
    return llm


def _close_evicted(loop: asyncio.AbstractEventLoop, llm: ChatOpenAI) -> None:
    """Close an evicted client's HTTP session, so its pooled connections are not left
    open. Only on its own loop: an aiohttp session cannot be closed from another, and
    one whose loop has ended has nothing left open (nothing runs its connections)."""
    if loop is not asyncio.get_running_loop():
        return
    task = loop.create_task(llm.root_async_client.close())
    _closing.add(task)  # held until done: a task with no reference may be collected
    task.add_done_callback(_closing.discard)


async def close_chat_models() -> None:
    """Close the HTTP sessions of this event loop's chat clients (the app is stopping)."""
    loop = asyncio.get_running_loop()
    for key in [key for key in _clients if key[-1] is loop]:
        await _clients.pop(key).root_async_client.close()


_KEEP = 8
_clients: dict[tuple[Any, ...], ChatOpenAI] = {}
_closing: set[asyncio.Task[None]] = set()


def _build(
    model: str,
    base_url: str | None,
    api_key: SecretStr | str | None,
    streaming: bool,
    timeout: float,
    max_retries: int,
) -> ChatOpenAI:
    import openai
    from langchain_openai import ChatOpenAI  # on first use: about 1 s of imports at start-up

    llm = ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=api_key,
        streaming=streaming,
        use_responses_api=False,
        timeout=timeout,
        max_retries=max_retries,
        http_async_client=openai.DefaultAioHttpClient(),
        stream_chunk_timeout=0,  # a task per chunk; ChunkDicts keeps the same bound
    )
    llm.async_client = _MessagesAsGiven(llm.async_client, llm.root_async_client)
    return llm
