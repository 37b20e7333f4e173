"""A streamed chat completion read as plain dicts, as LangChain reads them anyway.

The OpenAI SDK turns every streamed chunk into a `ChatCompletionChunk` model (about 70 µs
here: `construct_type` walks the model's fields), and langchain-openai turns it straight
back into a dict with `model_dump()`. A reply streams one chunk per token, so an image
turn (a tool call, then a closing sentence) spent a few milliseconds of the event loop
on objects nobody kept. LangChain takes dicts as they are (`_astream` checks for one),
so the body is read here from the SDK's raw streaming response instead: the request,
its retries and its status errors are still the SDK's.

langchain-openai also bounds the silence between chunks by wrapping every chunk's wait
in `asyncio.wait_for`, a task per chunk; that wrapper is turned off for these clients
(chat_app/chat_model.py) and the same bound is kept here, with one rescheduled timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

CHUNK_SILENCE_S = 120.0  # langchain-openai's default bound on a silent stream
# The SDK's header for "return the response unread" (what `with_streaming_response` sets).
_RAW_RESPONSE = "X-Stainless-Raw-Response"


class ChunkDicts:
    """The chunks of one streamed completion, each the JSON object the server sent."""

    def __init__(self, response: Any, silence_s: float = CHUNK_SILENCE_S) -> None:
        self._response = response  # the SDK's raw response: its body is read here
        self._silence_s = silence_s

    @classmethod
    async def post(
        cls,
        client: Any,
        body: bytes,
        options: dict[str, Any],
        silence_s: float = CHUNK_SILENCE_S,
    ) -> ChunkDicts:
        """Send the request, its JSON body already encoded (chat_app/request_body.py), by
        the SDK's generic `post` (its retries, auth and status errors), and hold the
        body, unread, as `with_streaming_response` would."""
        from openai import AsyncStream
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        headers = {**options.get("headers", {}), _RAW_RESPONSE: "stream"}
        response = await client.post(
            "/chat/completions",
            cast_to=ChatCompletion,
            content=body,
            options={**options, "headers": headers},
            stream=True,
            stream_cls=AsyncStream[ChatCompletionChunk],
        )
        return cls(response, silence_s)

    async def __aenter__(self) -> ChunkDicts:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._response.close()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        import openai
        from openai._streaming import SSEDecoder  # the SDK's own streams' decoder

        loop = asyncio.get_running_loop()
        done = False
        try:
            async with asyncio.timeout(loop.time() + self._silence_s) as silence:
                async for event in SSEDecoder().aiter_bytes(self._response.iter_bytes()):
                    if done or not event.data:  # after [DONE]: read to the body's end
                        continue  # so the connection is reused; no data: nothing to read
                    if event.data.startswith("[DONE]"):
                        done = True
                        continue
                    chunk = json.loads(event.data)
                    if isinstance(chunk, Mapping) and chunk.get("error"):
                        raise _stream_error(chunk["error"], self._response)
                    silence.reschedule(loop.time() + self._silence_s)
                    yield chunk
        except TimeoutError as exc:
            raise openai.APITimeoutError(request=self._response.http_request) from exc
        finally:
            await self.close()


def _stream_error(error: Any, response: Any) -> Exception:
    """An error the server sent inside the stream, as the SDK raises it."""
    import openai

    message = error.get("message") if isinstance(error, Mapping) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"
    return openai.APIError(message=message, request=response.http_request, body=error)
