"""The OpenAI client for image streams, with a line splitter that keeps up with images.

A streamed image request answers with server-sent events whose data lines are whole
images in base64: 1-3 MB each for a 1024x1024 picture, two partial images and the
result. The client splits lines with a regular expression (`[\\r\\n]`) run over every
byte, about 10 ms of CPU per megabyte on the app's machines, so 50-100 ms per image
turn went into looking for line ends in base64. `bytes.find` (memchr) does the same
search at memory speed. Only the splitting changes: the events are decoded, checked for
errors and typed by the client's own code, as for any stream (`SSEDecoder`,
`AsyncStream`); `_make_sse_decoder` is the client's hook for a decoder of its own.

Imported on first use, like the `openai` package it extends. The decoder leans on the
client's private parts; a client version without them gets its own decoder back
(`client_class`), slower but correct, rather than a broken stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
from openai._streaming import ServerSentEvent, SSEDecoder

_LF, _CR = 0x0A, 0x0D


class LineSplitter:
    """Lines ended by CR, LF or CRLF, from chunks of bytes that may split a line (or a
    CRLF) anywhere; the same lines as the client's `_SSELineDecoder`."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip_lf = False  # the last chunk ended with CR: a LF first is its CRLF's

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        start, size = 0, len(chunk)
        # Where the next LF and CR are from `start` on (-1: none left in this chunk),
        # each searched again only once passed: a chunk of many short lines is scanned
        # once, not once per line.
        lf = cr = -2
        while start < size:
            if self._skip_lf:
                self._skip_lf = False
                if chunk[start] == _LF:
                    start += 1
                    continue
            if -1 < lf < start or lf == -2:
                lf = chunk.find(b"\n", start)
            if -1 < cr < start or cr == -2:
                cr = chunk.find(b"\r", start)
            if lf == -1 and cr == -1:
                break
            end = cr if lf == -1 or -1 < cr < lf else lf
            self._buffer += memoryview(chunk)[start:end]
            line = bytes(self._buffer)
            self._buffer.clear()
            self._skip_lf = chunk[end] == _CR
            start = end + 1
            yield line
        if start < size:
            self._buffer += memoryview(chunk)[start:]

    def finish(self) -> Iterator[bytes]:
        if self._buffer:
            line = bytes(self._buffer)
            self._buffer.clear()
            yield line


class FastSSEDecoder(SSEDecoder):
    """The client's SSE decoder with `LineSplitter` for its line ends."""

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        lines = LineSplitter()
        try:
            for chunk in iterator:
                yield from self._decode_lines(lines.feed(chunk))
            yield from self._decode_lines(lines.finish())
        finally:
            self._reset()

    async def aiter_bytes(self, iterator: AsyncIterator[bytes]) -> AsyncIterator[ServerSentEvent]:
        lines = LineSplitter()
        try:
            async for chunk in iterator:
                for sse in self._decode_lines(lines.feed(chunk)):
                    yield sse
            for sse in self._decode_lines(lines.finish()):
                yield sse
        finally:
            self._reset()


class ImagesClient(openai.AsyncOpenAI):
    """`openai.AsyncOpenAI` whose streams are split into lines by `FastSSEDecoder`."""

    def _make_sse_decoder(self) -> Any:
        return FastSSEDecoder()


def client_class() -> type[openai.AsyncOpenAI]:
    """`ImagesClient` where this client version has the parts it builds on, else the
    client as it is."""
    needed = ("_decode_lines", "_reset")
    base_hook = getattr(openai.AsyncOpenAI, "_make_sse_decoder", None)
    if base_hook is None or not all(hasattr(SSEDecoder, name) for name in needed):
        return openai.AsyncOpenAI
    return ImagesClient
