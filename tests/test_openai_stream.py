"""The image client's line splitter: the same lines and events as the openai client's own
decoder, whatever the chunking (its speed is benchmarks/turn_latency.py's to show)."""

from __future__ import annotations

import base64
import json
import random

from openai._streaming import SSEDecoder, _SSELineDecoder

from pipelines.images.openai_stream import FastSSEDecoder, LineSplitter


def _chunked(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, at = [], 0
    while at < len(data):
        size = rng.choice([1, 2, 3, 5, 17, 100, 4096])
        chunks.append(data[at : at + size])
        at += size
    return chunks


def _lines(decoder: _SSELineDecoder | LineSplitter, chunks: list[bytes]) -> list[bytes]:
    return [line for chunk in chunks for line in decoder.feed(chunk)] + list(decoder.finish())


def test_lines_are_the_clients_whatever_the_chunks():
    rng = random.Random(14)
    for _ in range(2000):
        # CR, LF and CRLF in any mix, split anywhere (a CRLF across two chunks too).
        data = bytes(rng.choice(b"ab\r\n: ") for _ in range(rng.randint(0, 60)))
        chunks = _chunked(data, rng)
        assert _lines(LineSplitter(), chunks) == _lines(_SSELineDecoder(), chunks), data


def test_events_are_the_clients_for_an_image_stream():
    rng = random.Random(7)
    image = base64.b64encode(rng.randbytes(300_000)).decode()
    body = "".join(
        f"event: image_generation.{kind}\r\ndata: {json.dumps({'b64_json': image, 'i': i})}\n\n"
        for i, kind in enumerate(["partial_image", "partial_image", "completed"])
    ).encode()
    chunks = _chunked(body, rng)
    ours = [(e.event, e.data) for e in FastSSEDecoder().iter_bytes(iter(chunks))]
    theirs = [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter(chunks))]
    assert ours == theirs and len(ours) == 3
    assert json.loads(ours[-1][1])["b64_json"] == image
